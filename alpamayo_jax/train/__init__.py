"""The sharded trainer shared by every training stage (see `trainer.train`)."""
