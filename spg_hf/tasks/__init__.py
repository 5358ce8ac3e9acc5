"""Task code of the example scripts (run_glue_spg.py, run_qa_spg.py, run_audio_spg.py): data loading, metrics,
configuration parsing and output folders. Library users need none of it: the library is `spg_hf` itself."""
