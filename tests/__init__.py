"""The test suite. A regular package: a namespace package named `tests` would lose to any installed
distribution that ships a top-level `tests` package (torch-fidelity does)."""
