"""The worker scripts that tests launch as separate processes (torchrun, or a plain subprocess): each puts tests/ on
its path to import the helper module. A package, so that a test can import from one (`distributed.<worker>`)."""
