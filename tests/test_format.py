import numpy as np
import pytest

import nmgen
from nmgen import NMMatrix, Pattern, PatternError, ShapeError, compress, pad_k, prune


@pytest.mark.parametrize("n,m,v,K,N", [(2, 4, 1, 16, 10), (2, 8, 4, 32, 13), (8, 32, 32, 64, 100), (4, 16, 64, 48, 70),
                                       (1, 3, 2, 9, 5), (3, 3, 1, 6, 4)])
def test_prune_keeps_exactly_n_of_m(rng, n, m, v, K, N):
    B = rng.standard_normal((K, N)).astype(np.float32) + 0.01
    P = prune(B, f"{n}:{m}", vector=v)
    kept = (P != 0).reshape(K // m, m, N)
    assert (kept.sum(axis=1) == n).all()
    # every column of a vector keeps the same rows
    for j in range(N):
        assert (kept[:, :, j] == kept[:, :, (j // v) * v]).all()
    # the kept rows are the largest by L1 norm over the vector
    scores = np.zeros((K, -(-N // v)))
    for j in range(N):
        scores[:, j // v] += np.abs(B[:, j])
    for w in range(K // m):
        for jv in range(scores.shape[1]):
            s = scores[w * m:(w + 1) * m, jv]
            keep = kept[w, :, jv * v]
            assert s[keep].min() >= s[~keep].max() if (~keep).any() else True


def test_compress_round_trip(rng):
    B = prune(rng.standard_normal((64, 37)), "8:32", vector=32)
    nm = compress(B, "8:32", vector=32)
    assert nm.values.shape == (16, 37) and nm.indices.shape == (16, 2)
    np.testing.assert_array_equal(nm.to_dense(), B)


def test_compress_keeps_zero_rows_when_fewer_than_n(rng):
    B = np.zeros((8, 3), np.float32)
    B[1, :] = 1
    nm = compress(B, "2:4")
    np.testing.assert_array_equal(nm.to_dense(), B)
    assert (np.diff(nm.indices.reshape(2, 2, 3), axis=1) > 0).all()


def test_compress_rejects_a_matrix_that_breaks_the_pattern(rng):
    B = rng.standard_normal((8, 4)).astype(np.float32)
    with pytest.raises(PatternError, match=r"not 2:4 sparse.*window 0.*prune it first"):
        compress(B, "2:4")


def test_save_load(tmp_path, rng):
    nm = NMMatrix.from_dense(rng.standard_normal((64, 50)), "4:16", vector=8, prune_first=True)
    nm.save(tmp_path / "w.npz")
    back = NMMatrix.load(tmp_path / "w.npz")
    assert back.pattern == nm.pattern and back.shape == nm.shape
    np.testing.assert_array_equal(back.to_dense(), nm.to_dense())
    (tmp_path / "junk.npz").write_bytes(b"not a matrix")
    with pytest.raises(ShapeError, match="not an nmgen matrix file"):
        NMMatrix.load(tmp_path / "junk.npz")


@pytest.mark.parametrize("args,match", [
    (((30, 8), "8:32"), r"K=30 is not a multiple of the pattern window m=32; pad K to 32 .*nmgen.pad_k"),
    (((32, 8), "5:4"), r"n=5 must be between 1 and m=4"),
    (((32, 8), "2:4x"), r"not of the form n:m"),
    (((4, 4, 4), "2:4"), r"must be a 2-D matrix"),
])
def test_bad_input_says_what_and_how(args, match):
    shape, pattern = args
    with pytest.raises(nmgen.NMGenError, match=match):
        prune(np.ones(shape, np.float32), pattern)


def test_bad_vector_and_dtype():
    with pytest.raises(PatternError, match="V=0 must be at least 1"):
        prune(np.ones((4, 4), np.float32), "2:4", vector=0)
    with pytest.raises(ShapeError, match="dtype int64.*floating-point"):
        prune(np.ones((4, 4), np.int64), "2:4")
    with pytest.raises(ShapeError, match="NaN"):
        prune(np.full((4, 4), np.nan, np.float32), "2:4")


def test_nmmatrix_validation():
    v = np.ones((2, 4), np.float32)
    with pytest.raises(PatternError, match=r"indices must lie in \[0, 4\)"):
        NMMatrix(v, np.array([[0, 0, 0, 0], [4, 4, 4, 4]], np.uint8), Pattern(2, 4, 1), (4, 4))
    with pytest.raises(PatternError, match="strictly increasing"):
        NMMatrix(v, np.array([[1, 1, 1, 1], [1, 2, 2, 2]], np.uint8), Pattern(2, 4, 1), (4, 4))
    with pytest.raises(ShapeError, match=r"values must be float32 \(2, 4\)"):
        NMMatrix(v[:1], np.zeros((2, 4), np.uint8), Pattern(2, 4, 1), (4, 4))


def test_pad_k():
    A, B = pad_k(np.ones((3, 30), np.float32), np.ones((30, 5), np.float32), m=32)
    assert A.shape == (3, 32) and B.shape == (32, 5) and A[:, 30:].sum() == 0 and B[30:].sum() == 0


def test_reference_is_the_dense_product(rng):
    nm = NMMatrix.from_dense(rng.standard_normal((32, 9)), "2:8", vector=3, prune_first=True)
    A = rng.standard_normal((5, 32)).astype(np.float32)
    np.testing.assert_allclose(nmgen.spmm_reference(A, nm), A.astype(np.float64) @ nm.to_dense(np.float64))
    with pytest.raises(ShapeError, match="A's columns must equal B's rows"):
        nmgen.spmm_reference(np.ones((5, 31), np.float32), nm)


def test_random_compressed_weights_follow_the_pattern(rng):
    from nmgen.bench import problem_of, random_nm
    p = problem_of((4, 100, 128), "4:32", 32)
    B = random_nm(p, rng)                       # validated by NMMatrix
    kept = (B.to_dense() != 0).reshape(4, 32, 100).sum(axis=1)
    assert (kept == 4).all()


def test_check_rows_and_relative_error(rng):
    from nmgen.reference import check_rows, relative_error
    assert (check_rows(100, rng) == np.arange(100)).all()
    rows = check_rows(10_000, rng)
    assert len(rows) == 512 and rows[0] == 0 and rows[-1] == 9999 and (np.diff(rows) > 0).all()
    ref = np.ones((2, 3))
    assert relative_error(ref * (1 + 1e-7), ref) == pytest.approx(1e-7)
    assert np.isnan(relative_error(np.array([[1.0, np.nan, 1.0], [1, 1, 1]]), ref))
