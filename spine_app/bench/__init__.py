"""Benchmarks behind ``spine-app bench``: ``infer`` (inference latency), ``speed`` (training
throughput), ``compare`` / ``compare_report`` (equal-budget comparison with single-task models) and
``suite`` (every benchmark in one run, rewriting the docs' tables). Import the modules themselves."""
