"""Published results to compare with: MIRACLE's Table 1 (Havasi et al. 2019), LeNet-5 on MNIST.

MIRACLE's sizes count the index bits only (no seed, prior scales or architecture); ours are
the bytes of the file.
"""

LENET5_MNIST = [
    {"method": "Deep Compression", "size_bytes": 44000, "test_error": 0.008},
    {"method": "Weightless", "size_bytes": 4520, "test_error": 0.010},
    {"method": "Bayesian Compression", "size_bytes": 2300, "test_error": 0.010},
    {"method": "MIRACLE, lowest error", "size_bytes": 3030, "test_error": 0.0069},
    {"method": "MIRACLE, highest compression", "size_bytes": 1520, "test_error": 0.0096},
]
MIRACLE_LENET5_MNIST = [point for point in LENET5_MNIST if point["method"].startswith("MIRACLE")]
