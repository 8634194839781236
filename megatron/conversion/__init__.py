"""Moving checkpoints between layouts and formats: read any layout as one full model
(`checkpoint_reader`)."""
