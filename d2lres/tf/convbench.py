"""Single-convolution micro-benchmark behind ``model.MATMUL_MAX_SIDE`` / ``MATMUL_MIN_CHANNELS``:
TF's conv2d vs im2col (``extract_patches``) + one matmul, forward + backward (gradients for the
input and the kernel), medians. ``python -m d2lres.tf.convbench [batch] [repeats] [case,case,...]``;
one JSON line per case. Record the CPU (``lscpu``) with the numbers."""
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import tensorflow as tf


def pad(X, p):
    return tf.pad(X, [[0, 0], [p, p], [p, p], [0, 0]]) if p else X

def plain(X, K, s, p):
    k = K.shape[0]
    if s == 1 and k % 2 == 1 and p == k // 2:
        return tf.nn.conv2d(X, K, 1, "SAME")
    return tf.nn.conv2d(pad(X, p), K, s, "VALID")

def im2col(X, K, s, p):
    k, _, c, o = K.shape
    X = pad(X, p)
    P = X[:, ::s, ::s, :] if k == 1 else \
        tf.image.extract_patches(X, [1, k, k, 1], [1, s, s, 1], [1, 1, 1, 1], "VALID")
    n, h, w = tf.shape(P)[0], P.shape[1], P.shape[2]
    return tf.reshape(tf.reshape(P, [-1, k * k * c]) @ tf.reshape(K, [k * k * c, o]), [n, h, w, o])

def fb(f):
    @tf.function
    def run(X, K, dY, s, p):
        with tf.GradientTape() as t:
            t.watch([X, K])
            Y = f(X, K, s, p)
            loss = tf.reduce_sum(Y * dY)
        return (Y, *t.gradient(loss, [X, K]))
    return run

def median_ms(fn, args, reps):
    for _ in range(2):
        [a.numpy() for a in fn(*args)]
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        [a.numpy() for a in fn(*args)]
        ts.append(time.perf_counter() - t)
    return 1000 * float(np.median(ts))

N = int(sys.argv[1]) if len(sys.argv) > 1 else 128
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
cases = [  # side_in, c_in, c_out, k, s, p
    (10, 64, 64, 3, 1, 1), (10, 64, 128, 3, 2, 1), (5, 128, 128, 3, 1, 1), (5, 128, 256, 3, 2, 1),
    (3, 256, 256, 3, 1, 1), (3, 256, 512, 3, 2, 1), (2, 512, 512, 3, 1, 1),
    (5, 128, 256, 1, 2, 0), (3, 256, 512, 1, 2, 0),
    (3, 512, 512, 3, 1, 1), (24, 64, 64, 3, 1, 1), (12, 128, 128, 3, 1, 1), (6, 256, 256, 3, 1, 1),
    (6, 128, 256, 3, 2, 1),
    (12, 64, 128, 3, 2, 1), (6, 256, 512, 3, 2, 1),
]
if len(sys.argv) > 3:
    cases = [cases[int(i)] for i in sys.argv[3].split(",")]
rng = np.random.default_rng(0)
P, M = fb(plain), fb(im2col)
for side, c, o, k, s, p in cases:
    X = tf.constant(rng.standard_normal((N, side, side, c), dtype=np.float32))
    K = tf.constant(rng.standard_normal((k, k, c, o), dtype=np.float32) / np.sqrt(k * k * c))
    ho = (side + 2 * p - k) // s + 1
    dY = tf.constant(rng.standard_normal((N, ho, ho, o), dtype=np.float32))
    a, b = P(X, K, dY, s, p), M(X, K, dY, s, p)
    err = max(float(tf.reduce_max(tf.abs(u - v)) / (tf.reduce_max(tf.abs(u)) + 1e-12)) for u, v in zip(a, b))
    tp, ti = median_ms(P, (X, K, dY, s, p), reps), median_ms(M, (X, K, dY, s, p), reps)
    print(json.dumps(dict(N=N, side_in=side, side_out=ho, c_in=c, c_out=o, k=k, s=s, plain_ms=round(tp, 1),
                          im2col_ms=round(ti, 1), speedup=round(tp / ti, 2), rel_err=f"{err:.1e}")), flush=True)
