"""GPT pretraining entry point (placeholder until the training loop lands)."""
import sys

if __name__ == "__main__":
    sys.exit("pretrain_gpt.py: the training loop is not implemented yet")
