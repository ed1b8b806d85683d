"""cvops' inference server: registered detectors served from ``models:/<name>@<alias>`` over HTTP,
following the alias as promotion moves it (docs/serving.md)."""
