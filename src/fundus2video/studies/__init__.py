"""Studies: variants x seeds at one budget, each (variant, seed) a resumable unit, and the report
rebuilt from the finished units' files. spec.py loads a spec, runner.py runs its units, report.py and
declared.py write its report (results.py: what both read). `fundus2video study` parses and calls."""
