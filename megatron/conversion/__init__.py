"""Moving checkpoints between layouts and formats: any layout read as one full model
(`checkpoint_reader`) with its Adam state (`optimizer_reader`), a full model written at any
layout (`checkpoint_writer`), and the Hugging Face mapping and folders (`hf_mapping`,
`hf_folder`)."""
