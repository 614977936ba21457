"""The names under which evaluations log what they measure: one place, read by the registry.

No heavy imports here, so the registry and the analysis read the names without loading torch.
`latentbridge.content` says what each content metric means.
"""

BITS = "content/bits_transmitted"
BITS_LOW = "content/bits_transmitted_low"
BITS_HIGH = "content/bits_transmitted_high"
FRACTION = "content/fraction_recovered"
RETRIEVAL = "content/retrieval_top1"
RETRIEVAL_CHANCE = "content/retrieval_chance"
# the share of mismatched answers that give the gold of the question whose soft tokens were read
MISMATCHED_FOLLOWS = "content/mismatched_follows_soft_source"
MISMATCHED_ACCURACY = "mismatched_accuracy"  # generation from another question's soft tokens
CONTENT = (BITS, BITS_LOW, BITS_HIGH, FRACTION, RETRIEVAL, RETRIEVAL_CHANCE, MISMATCHED_FOLLOWS, MISMATCHED_ACCURACY)
TEST_PREFIX = "test_"  # the held-out test evaluation logs every metric again under this prefix
