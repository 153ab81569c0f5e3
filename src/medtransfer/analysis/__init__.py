"""Analysis stage: activations, representation similarity, weights, k-NN probes, FID, predictions."""
