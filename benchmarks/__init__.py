"""Benchmarks: what isolation costs against running the same plugins in-process."""
