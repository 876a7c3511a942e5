"""The live view: a web page on 127.0.0.1 that shows a camera's newest frames, served by a
process of its own that reads them best-effort, so that it can never put a run's data at risk."""
