"""The experiment harness: CLI, typed configs, the results store, the cache of finished
pieces, claims and verdicts, the report, plotting helpers and multi-host start-up.

It never imports an experiment; experiments import it (`experiments.registry` lists them).
"""
