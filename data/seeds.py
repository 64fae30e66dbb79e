"""How a run's seed becomes the seed of each epoch's order and of each batch's augmentation, and so the largest
run seed there can be: torch seeds a generator with an integer of 64 bits at most.

The largest seed derived is a batch's, (seed * 1_000_003 + epoch) * 1_000_003 + batch, which passes 2^64 for seeds
above about 18.4 million. SEED_MAX leaves room for every epoch a run may have and for 2^32 batches an epoch.
"""

from __future__ import annotations

TORCH_SEED_LIMIT = 2**64 - 1  # torch.Generator.manual_seed refuses anything larger
MAX_EPOCHS = 10_000  # the epochs a run may have (trainer.config: epochs)
MAX_BATCHES = 2**32  # batches of one epoch: far more than any dataset at batch size 1
_BATCH_PRIME, _ORDER_PRIME = 1_000_003, 7_919

SEED_MAX = 2**24 - 1  # 16,777,215: the largest run seed, a round number under the limit batch_seed leaves


def order_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's shuffled order."""
    return seed * _ORDER_PRIME + epoch


def batch_seed(seed: int, epoch: int, batch_index: int) -> int:
    """The seed of one batch's augmentation."""
    return (seed * _BATCH_PRIME + epoch) * _BATCH_PRIME + batch_index
