import warnings

import numpy as np
import pytest

import nmgen
from nmgen import FileError, NMMatrix, Pattern, PatternError, ShapeError, compress, pad_k, prune


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


def test_bad_vector_and_dtype(rng):
    with pytest.raises(PatternError, match="V=0 must be at least 1"):
        prune(np.ones((4, 4), np.float32), "2:4", vector=0)
    # a vector cut short by N is scored as one padded with zeros to V, in float64: 1 + 2^-52 beats 1
    t = 2.0 ** -53
    assert prune(np.array([[1, 0, 0, 0], [1, 0, t, t]], np.float32), "1:2", vector=8)[0].tolist() == [0, 0, 0, 0]
    W = rng.standard_normal((32, 8)).astype(np.float32)
    assert np.array_equal(prune(W, "2:4x2"), prune(W, "2:4", vector=2))     # "n:mxV", as nmgen prints patterns
    with pytest.raises(PatternError, match="V=2 but vector=4 was given"):
        prune(W, "2:4x2", vector=4)
    with pytest.raises(PatternError, match=r"Pattern\(2, 4, 4\), or '2:4' with vector=4"):
        prune(W, Pattern(2, 4), vector=4)                 # a Pattern's V (1 by default) against another
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
    with pytest.raises(ShapeError, match=r"values must be float32, bfloat16 or float16 \(2, 4\)"):
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


# ---- sizes are integers, never truncated; K = 0 is refused where it can enter ----------------------
@pytest.mark.parametrize("call,error,match", [
    (lambda: prune(np.ones((8, 4), np.float32), "2:4", vector=2.5), PatternError, r"V=2\.5 must be an integer"),
    (lambda: prune(np.ones((8, 4), np.float32), "2:4", vector=True), PatternError, r"V=True must be an integer"),
    (lambda: compress(np.zeros((8, 4), np.float32), (2.0, 4)), PatternError, r"n=2\.0 must be an integer"),
    (lambda: NMMatrix.from_dense(np.ones((8, 4), np.float32), "2:4", vector=1.5, prune_first=True), PatternError,
     r"V=1\.5 must be an integer"),
    (lambda: NMMatrix.from_dense(np.ones((8, 4), np.float32), 2.5), PatternError, r"must be a string 'n:m'"),
    (lambda: Pattern(2, 4.0), PatternError, r"m=4\.0 must be an integer, got float"),
    (lambda: Pattern.parse("2:4", 1.5), PatternError, r"V=1\.5 must be an integer"),
    (lambda: Pattern(2, 4, 8).__class__(2, 4, np.float32(8)), PatternError, r"must be an integer, got float32"),
    (lambda: NMMatrix(np.zeros((2, 4), np.float32), np.zeros((2, 4), np.uint8), Pattern(2, 4), (4.0, 4)), ShapeError,
     r"K=4\.0 must be an integer"),
    (lambda: pad_k(np.ones((3, 10), np.float32), m=0), ShapeError, r"m=0 must be a window of at least 1 row"),
    (lambda: pad_k(np.ones((3, 10), np.float32), m=2.5), ShapeError, r"m \(the pattern window\)=2\.5 must be an integer"),
])
def test_sizes_must_be_integers(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_numpy_integer_sizes_are_accepted_as_ints():
    p = Pattern(np.int64(2), np.int32(4), np.uint8(1))
    assert p == Pattern(2, 4, 1) and type(p.n) is int and str(p) == "2:4x1"
    nm = NMMatrix.from_dense(np.ones((8, 4), np.float32), "2:4", vector=np.int64(2), prune_first=True)
    assert nm.pattern.vector == 2 and nm.shape == (8, 4)


@pytest.mark.parametrize("call", [
    lambda: NMMatrix.from_dense(np.zeros((0, 8), np.float32), "2:4"),
    lambda: NMMatrix.from_dense(np.zeros((0, 8), np.float32), "2:4", prune_first=True),
    lambda: prune(np.zeros((0, 8), np.float32), "2:4"),
    lambda: compress(np.zeros((0, 8), np.float32), "2:4"),
    lambda: NMMatrix(np.zeros((0, 8), np.float32), np.zeros((0, 8), np.uint8), Pattern(2, 4), (0, 8)),
], ids=["from_dense", "from_dense-prune_first", "prune", "compress", "NMMatrix"])
def test_k_zero_is_refused_clearly(call):
    with pytest.raises(ShapeError, match=r"K=0: B needs at least one window of m=4 rows"):
        call()


def test_k_zero_and_mismatched_k_in_pad_k():
    with pytest.raises(ShapeError, match="A has K=0 columns"):
        pad_k(np.zeros((3, 0), np.float32), m=4)
    with pytest.raises(ShapeError, match="B has K=0 rows"):
        pad_k(B=np.zeros((0, 5), np.float32), m=4)
    with pytest.raises(ShapeError, match="A has 10 columns but B has 11 rows"):
        pad_k(np.ones((3, 10), np.float32), np.ones((11, 2), np.float32), m=3)


def test_no_columns_is_refused_clearly():
    with pytest.raises(ShapeError, match="B is 8x0: it needs at least one column"):
        prune(np.zeros((8, 0), np.float32), "2:4")
    with pytest.raises(ShapeError, match=r"shape \(8, 0\): B needs at least one column"):
        NMMatrix(np.zeros((4, 0), np.float32), np.zeros((4, 0), np.uint8), Pattern(2, 4), (8, 0))


@pytest.mark.parametrize("m", [3, "1:3", Pattern(1, 3, 2), np.int64(3)], ids=repr)
def test_pad_k_takes_the_window_or_the_pattern(m):
    A, B = pad_k(np.ones((2, 10), np.float32), np.ones((10, 3), np.float32), m=m)
    assert A.shape == (2, 12) and B.shape == (12, 3)
    assert A[:, 10:].sum() == 0 and B[10:].sum() == 0 and A[:, :10].sum() == 20 and B[:10].sum() == 30


def test_pad_advice_is_a_call_that_works(rng):
    """The message's advised call, run as written, makes K a multiple of m, and the product of the
    padded operands is the product of the originals."""
    import re
    A = rng.standard_normal((5, 10)).astype(np.float32)
    B = rng.standard_normal((10, 7)).astype(np.float32)
    with pytest.raises(ShapeError) as e:
        NMMatrix.from_dense(B, "1:3", prune_first=True)
    call = re.search(r"A, B = (nmgen\.pad_k\(A, B, m=3\))", str(e.value))
    assert call, str(e.value)
    A2, B2 = eval(call.group(1), {"nmgen": nmgen, "A": A, "B": B})
    assert A2.shape == (5, 12) and B2.shape == (12, 7)
    nm = NMMatrix.from_dense(B2, "1:3", prune_first=True)
    dense = nm.to_dense(np.float64)
    assert (dense[10:] == 0).all()              # the padded rows are zero (pruning may keep one: it adds nothing)
    np.testing.assert_allclose(nmgen.spmm_reference(A2, nm), A.astype(np.float64) @ dense[:10], rtol=1e-12)
    with pytest.raises(ShapeError, match=r"A, B = nmgen\.pad_k\(A, B, m=3\)"):
        nmgen.Problem(5, 7, 10, Pattern(1, 3))


# ---- NMMatrix.load: anything but a file save wrote is one ShapeError naming the file -----------------
def _npz(**arrays):
    def write(path, good):
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    return write


def _bytes(cut):
    return lambda path, good: path.write_bytes(cut(good))


def _npy(path, good):
    with open(path, "wb") as f:
        np.save(f, np.ones(3))


V4, I4 = np.ones((4, 2), np.float32), np.array([[0], [1], [0], [1]], np.uint8)   # a 8x2 2:4x2 matrix


@pytest.mark.parametrize("write,match", [
    (_bytes(lambda g: b""), r"not an nmgen matrix file .*EOFError"),
    (_bytes(lambda g: g[: len(g) // 2]), r"not an nmgen matrix file .*BadZipFile"),
    (_bytes(lambda g: g[:200] + b"x" * 60 + g[260:]), r"not an nmgen matrix file .*"),
    (_bytes(lambda g: b"not a matrix"), r"not an nmgen matrix file .*: it is not an .npz archive$"),
    (_bytes(lambda g: b"\x80\x04K\x01."), r"not an nmgen matrix file .*: it holds pickled objects$"),
    (_npz(values=V4, indices=I4, meta=np.array([1, 2, 4, 1.5, 8, 2])), r"meta record must be integers .*float64"),
    (_npz(values=V4, indices=I4, meta=np.array([1, 2, 4, 2, 8])), r"format version 1 with 5 meta entries"),
    (_npz(values=V4), r"no indices, meta array"),
    (_npz(values=V4[:3], indices=I4, meta=np.array([1, 2, 4, 2, 8, 2])), r"values must be float32, bfloat16 or float16 \(4, 2\)"),
    (_npz(values=V4, indices=I4, meta=np.array([1, 2, 0, 2, 8, 2])), r"window m=0 must be between"),
    (_npz(values=V4, indices=I4, meta=np.array([7, 2, 4, 2, 8, 2])), r"format version 7"),
    (_npz(values=V4, indices=I4, meta=np.array([2, 2, 4, 2, 8, 2, 9])), r"dtype code 9"),
    (_npz(values=V4, indices=I4, meta=np.array([2, 2, 4, 2, 8, 2, 2])), r"values are float32, but its meta record says f16"),
    (_npy, r"holds one ndarray"),
], ids=["empty", "truncated", "corrupted", "junk", "pickle", "meta-V-1.5", "meta-shape", "missing-arrays",
        "values-shape", "meta-m-0", "version", "dtype-code", "dtype-mismatch", "npy"])
def test_load_refuses_anything_but_a_saved_matrix(tmp_path, rng, write, match):
    good = tmp_path / "good.npz"
    NMMatrix.from_dense(rng.standard_normal((64, 50)), "4:16", vector=8, prune_first=True).save(good)
    bad = tmp_path / "bad.npz"
    write(bad, good.read_bytes())
    with pytest.raises(ShapeError, match=match) as e:
        NMMatrix.load(bad)
    assert str(bad) in str(e.value)


def test_load_of_the_good_meta_writer_works(tmp_path):
    _npz(values=V4, indices=I4, meta=np.array([1, 2, 4, 2, 8, 2]))(tmp_path / "ok.npz", b"")
    nm = NMMatrix.load(tmp_path / "ok.npz")
    assert nm.pattern == Pattern(2, 4, 2) and nm.shape == (8, 2)
    np.testing.assert_array_equal(nm.to_dense()[[0, 5]], np.ones((2, 2)))


def test_load_missing_file(tmp_path):
    """A FileError, which code that handles files catches as the OSError it is."""
    with pytest.raises(OSError, match=r"cannot read .*nothere\.npz: No such file") as e:
        NMMatrix.load(tmp_path / "nothere.npz")
    assert isinstance(e.value, FileError)


# ---- dtypes: every spelling numpy (and torch) has for the stored types ------------------------------
def _spellings():
    import ml_dtypes
    out = [(np.float16, "f16"), (np.float32, "f32"), (ml_dtypes.bfloat16, "bf16"), (np.dtype("<f2"), "f16"),
           (np.dtype(ml_dtypes.bfloat16), "bf16"), ("e", "f16"), ("float16", "f16"), ("FP16", "f16"),
           ("bfloat16", "bf16"), ("f32", "f32")]
    try:
        import torch
    except ImportError:
        return out
    return out + [(torch.float16, "f16"), (torch.bfloat16, "bf16"), (torch.float32, "f32")]


@pytest.mark.parametrize("spelling,name", _spellings(), ids=repr)
def test_every_spelling_of_a_stored_dtype_is_taken(rng, spelling, name):
    from nmgen.ir.dtypes import DTYPES
    W = rng.standard_normal((16, 8)).astype(np.float32)
    nm = NMMatrix.from_dense(W, "2:4", prune_first=True, dtype=spelling)
    assert nm.dtype == name and nm.values.dtype == DTYPES[name].storage
    assert nm.astype(np.float32).dtype == "f32" and nm.astype(spelling).dtype == name
    assert nmgen.Problem(16, 8, 16, Pattern(2, 4, 8), spelling, c_dtype=spelling) == \
        nmgen.Problem(16, 8, 16, Pattern(2, 4, 8), name, c_dtype=name)
    assert nmgen.compile("16x8x16", "2:4", 8, dtype=spelling).problem.dtype == name


@pytest.mark.parametrize("spelling,shown", [(np.float64, "numpy.float64"), (np.dtype("float64"), "dtype('float64')"),
                                            ("float64", "'float64'"), (np.int8, "numpy.int8"),
                                            (float, "float (float64)"), ("F", "'F' (complex64)"), (None, "None")],
                         ids=repr)
def test_an_unsupported_dtype_is_named_with_the_supported_ones(rng, spelling, shown):
    import re
    W = rng.standard_normal((16, 8)).astype(np.float32)
    with pytest.raises(ShapeError, match=rf"dtype {re.escape(shown)} is not supported: nmgen computes with f32 \(float32\), "
                                         rf"tf32 .*bf16 \(bfloat16\) and f16 \(float16\); pass one of those names"):
        NMMatrix.from_dense(W, "2:4", prune_first=True).astype(spelling)


# ---- values beyond the target dtype's range: said so, no numpy warning, before they become infinite -----
@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_weights_beyond_float16s_range_are_refused_with_the_range(rng):
    import re
    W = rng.standard_normal((64, 48)).astype(np.float32) * 1e6
    top = np.abs(nmgen.prune(W, "2:4")).max()
    with pytest.raises(ShapeError, match=rf"the weights: \|value\| up to {re.escape(f'{top:.4g}')} exceeds float16's largest finite "
                                         r"65504: scale them or use bf16 / f32"):
        NMMatrix.from_dense(W, "2:4", prune_first=True, dtype="f16")
    nm = NMMatrix.from_dense(W, "2:4", prune_first=True, dtype="bf16")     # bfloat16 has float32's range
    assert np.isfinite(nm.values.astype(np.float32)).all()
    # rounding to the largest finite value is no overflow
    assert NMMatrix.from_dense(np.full((4, 1), 65519.0, np.float32), "4:4", dtype="f16").values.max() == 65504


def test_weights_too_small_for_float16_are_flushed_with_a_warning(rng):
    """Below half float16's smallest subnormal (~3e-8) a kept weight rounds to 0: said, not silent."""
    W = rng.standard_normal((128, 64)).astype(np.float32) * 1e-8
    with pytest.warns(UserWarning, match=r"the weights: \d+ non-zero values of 2048 \(\|value\| up to .*\) are too "
                                         r"small for float16 and became 0; scale them or use bf16 / f32"):
        nm = NMMatrix.from_dense(W, "8:32", vector=32, prune_first=True, dtype="f16")
    assert (nm.values == 0).sum() > 1000
    with warnings.catch_warnings():
        warnings.simplefilter("error")         # bfloat16 has float32's range: nothing lost, nothing said
        NMMatrix.from_dense(W, "8:32", vector=32, prune_first=True, dtype="bf16")


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_float64_beyond_float32s_range_is_refused_with_the_range():
    with pytest.raises(ShapeError, match=r"B: \|value\| up to 1e\+39 exceeds float32's largest finite 3.40282e\+38: "
                                         r"scale them$"):
        prune(np.full((4, 4), 1e39), "2:4")
    with pytest.raises(ShapeError, match="B contains NaN or infinity"):        # a real infinity is still that
        prune(np.full((4, 4), np.inf), "2:4")
    W = np.ones((4, 4), np.float32)
    W[2, 1], W[3, 3] = np.nan, np.inf
    with pytest.raises(ShapeError, match=r"B contains NaN or infinity: 2 element\(s\), the first B\[2, 1\] = nan; "
                                         r"replace them"):           # where, how many, and the fix
        prune(W, "2:4")


@pytest.mark.parametrize("name,match", [
    ("", r"cannot write .*: it is a directory; give a file name$"),
    ("nodir/b.npz", r"cannot write .*nodir/b\.npz: the directory .*nodir does not exist; create it first$"),
    ("afile/b.npz", r"cannot write .*afile/b\.npz: .*afile is not a directory$"),
])
def test_save_to_a_place_it_cannot_write_names_it(tmp_path, rng, name, match):
    (tmp_path / "afile").write_text("x")
    nm = NMMatrix.from_dense(rng.standard_normal((8, 4)), "2:4", prune_first=True)
    with pytest.raises(FileError, match=match):
        nm.save(tmp_path / name)


def test_pad_k_of_an_nmmatrix_says_what_to_pad(rng):
    nm = NMMatrix.from_dense(rng.standard_normal((32, 8)), "8:32", prune_first=True)
    with pytest.raises(ShapeError, match=r"pad_k pads dense matrices; B is an NMMatrix \(32x8, compressed"):
        nmgen.pad_k(rng.standard_normal((2, 30)), nm, m=32)


def test_save_replaces_a_file_only_when_asked(tmp_path, rng):
    notes = tmp_path / "notes"
    notes.write_text("my notes")
    nm = NMMatrix.from_dense(rng.standard_normal((8, 4)), "2:4", prune_first=True)
    with pytest.raises(FileError, match=r"notes already exists; pass overwrite=True to replace it"):
        nm.save(notes)
    assert notes.read_text() == "my notes"
    nm.save(notes, overwrite=True)
    assert NMMatrix.load(notes).K == 8


def test_save_wraps_an_os_error_during_the_write(tmp_path, rng, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(np, "savez", full)
    nm = NMMatrix.from_dense(rng.standard_normal((8, 4)), "2:4", prune_first=True)
    with pytest.raises(FileError, match=r"cannot write .*b\.npz: No space left on device$"):
        nm.save(tmp_path / "b.npz")


@pytest.mark.parametrize("vector", [65537, 10**9, 10**20])
def test_a_vector_longer_than_any_weight_needs_is_refused_in_one_line(vector):
    # it used to reach numpy: a 477 GiB allocation at V = 1e9, an overflow at 1e20
    W = np.ones((64, 64), np.float32)
    with pytest.raises(PatternError, match=f"vector length V={vector} must be at most 65536 \\(a vector of more columns"):
        NMMatrix.from_dense(W, "2:4", vector=vector, prune_first=True)
    assert NMMatrix.from_dense(W, "2:4", vector=65536, prune_first=True).pattern.vector == 65536


def test_to_dense_takes_nmgens_dtype_names(rng):
    """numpy reads "f16" as a 16-byte float: to_dense resolves nmgen's names first, so
    `B.to_dense(B.dtype)` keeps the stored dtype; None is the documented float32."""
    import ml_dtypes
    half = NMMatrix.from_dense(rng.standard_normal((64, 16)).astype(np.float16), "8:32", vector=8, prune_first=True)
    brain = half.astype("bf16")
    assert half.to_dense(half.dtype).dtype == np.float16
    assert brain.to_dense(brain.dtype).dtype == ml_dtypes.bfloat16
    assert half.to_dense().dtype == half.to_dense(None).dtype == half.to_dense("tf32").dtype == np.float32
    assert half.to_dense(np.float64).dtype == half.to_dense("float64").dtype == np.float64
    np.testing.assert_array_equal(half.to_dense(half.dtype).astype(np.float64), half.to_dense(np.float64))
    assert half.to_dense("f64").dtype == half.to_dense("fp64").dtype == np.float64
    # types that would round the values or cannot hold the zeros, bytes (numpy's "f16" is float128)
    for bad in (np.int32, "complex64", ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e8m0fnu, b"f16"):
        with pytest.raises(ShapeError, match="to_dense writes float32, float64, float16 or bfloat16 values"):
            half.to_dense(bad)


@pytest.mark.parametrize("call", ["save-file", "save-int", "load-file"])
def test_save_and_load_take_file_names_not_open_files(tmp_path, rng, call):
    B = NMMatrix.from_dense(rng.standard_normal((64, 16)), "8:32", vector=8, prune_first=True)
    path = tmp_path / "b.npz"
    B.save(path)
    with open(path, "rb") as f, pytest.raises(ShapeError, match="by name: pass a str or pathlib.Path, not") as e:
        {"save-file": lambda: B.save(open(tmp_path / "c.npz", "wb")), "save-int": lambda: B.save(3),
         "load-file": lambda: NMMatrix.load(f)}[call]()
    assert call == "save-int" or "its name" in str(e.value)


def test_load_names_an_npz_of_object_arrays(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, values=np.array([1, "a"], dtype=object), indices=I4, meta=np.zeros(7, np.int64))
    with pytest.raises(ShapeError, match=r"is an \.npz archive of object \(pickled\) arrays$"):
        NMMatrix.load(path)


def test_reference_refuses_a_dense_b(rng):
    with pytest.raises(ShapeError, match="B must be an nmgen.NMMatrix .*not ndarray"):
        nmgen.spmm_reference(np.ones((2, 64), np.float32), rng.standard_normal((64, 16)))


def test_save_refuses_a_device(rng):
    """An .npz archive seeks back to finish: zipfile failed on /dev/null with a raw struct.error."""
    B = NMMatrix.from_dense(rng.standard_normal((64, 16)), "8:32", vector=8, prune_first=True)
    with pytest.raises(FileError, match="cannot write /dev/null: NMMatrix.save writes a regular file"):
        B.save("/dev/null", overwrite=True)
