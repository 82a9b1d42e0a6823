"""Speaker embedding: the ECAPA-TDNN core and the batcher that feeds it."""
