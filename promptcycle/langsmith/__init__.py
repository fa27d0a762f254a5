"""promptcycle and LangSmith: configuration, datasets, and a local fake of its REST API for tests.

Everything here is optional: promptcycle runs fully without LangSmith. `fake` is a test double
(`FakeLangSmith`, `FakeLangSmithServer`), shipped so that tests, demos and benches run offline.
"""
