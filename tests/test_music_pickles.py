"""NumPy-dumped piano-roll pickles: read without running code, same as the JSON twin; hostile ones refused."""

import io
import os
import pickle
import pickletools
import struct

import numpy as np
import pytest

from rnn_jax.data import music, safe_pickle

PROTOCOLS = [2, 3, 4, 5]
# The module path the installed NumPy writes (numpy._core in NumPy 2, numpy.core in NumPy 1).
INSTALLED_CORE = "numpy._core" if b"numpy._core." in pickle.dumps(np.int64(1), protocol=2) else "numpy.core"

# Ways a step of pitches appears in NumPy re-dumps: lists/tuples of NumPy scalars, 1-D arrays of
# integer and float dtypes in both byte orders.
STEP_FORMS = [
    lambda ps: [np.int64(p) for p in ps],
    lambda ps: tuple(np.float64(p) for p in ps),
    lambda ps: [np.int32(p) for p in ps],
    lambda ps: [np.uint8(p) for p in ps],
    lambda ps: np.array(ps, np.int64),
    lambda ps: np.array(ps, ">i8"),
    lambda ps: np.array(ps, ">i2"),
    lambda ps: np.array(ps, np.int8),
    lambda ps: np.array(ps, np.uint8),
    lambda ps: np.array(ps, ">u4"),
    lambda ps: np.array(ps, np.float32),
    lambda ps: np.array(ps, ">f8"),
    lambda ps: np.array(ps, np.float16),
]


def numpy_dataset(seed=0):
    """A JSB-style dataset holding NumPy values, and the same pitches as plain lists of ints."""
    rng = np.random.default_rng(seed)
    data, plain = {}, {}
    form = 0
    for split, n in (("train", 4), ("valid", 2), ("test", 2)):
        seqs, plain_seqs = [], []
        for _ in range(n):
            seq, plain_seq = [], []
            for _ in range(int(rng.integers(3, 8))):
                chosen = rng.choice(np.arange(36, 90), rng.integers(1, 5), replace=False)
                pitches = sorted(int(p) for p in chosen)
                seq.append(STEP_FORMS[form % len(STEP_FORMS)](pitches))
                plain_seq.append(pitches)
                form += 1
            seqs.append(seq)
            plain_seqs.append(plain_seq)
        data[split], plain[split] = seqs, plain_seqs
    # empty steps (silence) as arrays, and a strided array (protocol 5 cannot use its buffer directly)
    data["train"][0] += [np.array([], np.float32), np.array([], ">i8"), np.arange(40, 80)[::13]]
    plain["train"][0] += [[], [], [40, 53, 66, 79]]
    data["valid"][1].append([np.int64(60), np.float64(64.0), np.int32(67)])
    plain["valid"][1].append([60, 64, 67])
    return data, plain


def strip_frames(data: bytes) -> bytes:
    """The pickle without its FRAME opcodes (optional hints), so that edits may change lengths."""
    frames = [pos for op, _, pos in pickletools.genops(data) if op.name == "FRAME"]
    for pos in reversed(frames):
        data = data[:pos] + data[pos + 9:]
    return data


def replace_text(data: bytes, old: str, new: str) -> bytes:
    """Replaces a text operand (GLOBAL module, BINUNICODE, SHORT_BINUNICODE) everywhere."""
    data = strip_frames(data)
    edited = data.replace(b"c" + old.encode() + b"\n", b"c" + new.encode() + b"\n")
    edited = edited.replace(b"X" + struct.pack("<I", len(old)) + old.encode(),
                            b"X" + struct.pack("<I", len(new)) + new.encode())
    edited = edited.replace(b"\x8c" + bytes([len(old)]) + old.encode(),
                            b"\x8c" + bytes([len(new)]) + new.encode())
    assert edited != data, f"{old!r} not found"
    return edited


def replace_raw(data: bytes, old: bytes, new: bytes) -> bytes:
    """Replaces the raw bytes of one NumPy value, however the protocol wrote them."""
    data = strip_frames(data)
    text_old, text_new = old.decode("latin1").encode("utf-8"), new.decode("latin1").encode("utf-8")
    for ours, theirs in [
        (b"C" + bytes([len(old)]) + old, b"C" + bytes([len(new)]) + new),  # SHORT_BINBYTES
        (b"\x96" + struct.pack("<Q", len(old)) + old,  # BYTEARRAY8
         b"\x96" + struct.pack("<Q", len(new)) + new),
        (b"X" + struct.pack("<I", len(text_old)) + text_old,  # protocol 2: _codecs.encode(text, 'latin1')
         b"X" + struct.pack("<I", len(text_new)) + text_new),
    ]:
        if data.count(ours) == 1:
            return data.replace(ours, theirs)
    raise AssertionError(f"{old!r} not found once")


def dataset_with(value, protocol):
    """A small NumPy dataset with ``value`` as the second step of the validation split."""
    data = {"train": [[np.array([60, 64]), [np.int64(62)]]], "valid": [[[np.int64(60)], value]],
            "test": [[np.array([67.0], np.float32)]]}
    return pickle.dumps(data, protocol=protocol)


def load(tmp_path, data: bytes, name="x.pkl"):
    path = tmp_path / name
    path.write_bytes(data)
    return music.load_piano_rolls(path)


def assert_same_rolls(a: music.PianoRolls, b: music.PianoRolls):
    assert (a.low, a.high) == (b.low, b.high)
    for split in music.SPLITS:
        np.testing.assert_array_equal(a.split(split), b.split(split))
        np.testing.assert_array_equal(a.starts[split], b.starts[split])


# --------------------------------------------------------------------------------------------
# Accepted
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [0, 1] + PROTOCOLS)
def test_numpy_dumped_pickle_equals_its_json_twin(tmp_path, protocol):
    data, plain = numpy_dataset()
    dumped = pickle.dumps(data, protocol=protocol)
    assert b"scalar" in dumped and b"dtype" in dumped and b"ndarray" in dumped
    if protocol <= 2:
        assert b"_codecs" in dumped and b"bytes" in dumped  # how protocols 0-2 write bytes (and b"")
    if protocol == 5:
        assert b"_frombuffer" in dumped and b"\x96" in dumped  # in-band buffers (BYTEARRAY8)
    (tmp_path / "d.pkl").write_bytes(dumped)
    music.save_json(tmp_path / "d.json", data)
    loaded = music.load_piano_rolls(tmp_path / "d.pkl")
    assert loaded == music.load_piano_rolls(tmp_path / "d.json") == plain
    assert all(type(p) is int for split in loaded.values() for seq in split for step in seq for p in step)
    assert all(type(step) is list for split in loaded.values() for seq in split for step in seq)
    rolls = music.piano_rolls(tmp_path / "d.pkl")
    assert_same_rolls(rolls, music.piano_rolls(tmp_path / "d.json"))
    assert rolls.train.dtype == np.float32 and rolls.train.shape[0] == sum(len(s) for s in plain["train"])


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("core", ["numpy.core", "numpy._core"])
def test_numpy_1_and_numpy_2_module_paths(tmp_path, protocol, core):
    data, plain = numpy_dataset(seed=1)
    dumped = pickle.dumps(data, protocol=protocol)
    if core != INSTALLED_CORE:
        for module in ("multiarray", "numeric"):
            if f"{INSTALLED_CORE}.{module}".encode() in dumped:
                dumped = replace_text(dumped, f"{INSTALLED_CORE}.{module}", f"{core}.{module}")
    assert f"{core}.multiarray".encode() in dumped
    other = "numpy.core" if core == "numpy._core" else "numpy._core"
    assert other.encode() + b"." not in dumped
    assert load(tmp_path, dumped) == plain
    music.save_json(tmp_path / "twin.json", data)
    assert_same_rolls(music.piano_rolls(tmp_path / "x.pkl"), music.piano_rolls(tmp_path / "twin.json"))


def test_python2_style_numpy_scalar():
    """As Python 2's NumPy wrote a scalar: str data (read as latin-1), align/copy as ints 0 and 1."""
    pickled = (b"\x80\x02cnumpy.core.multiarray\nscalar\ncnumpy\ndtype\nU\x02i8K\x00K\x01\x87R"
               b"(K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tbU\x08" + (60).to_bytes(8, "little")
               + b"\x86R.")
    value = safe_pickle.loads(pickled)
    assert value == 60 and type(value) is int


def test_stand_ins_are_not_numpy():
    unpickler = safe_pickle.SafeUnpickler(io.BytesIO(b"."))
    for module, name in sorted(safe_pickle.NUMPY_GLOBALS | safe_pickle.HELPER_GLOBALS):
        stand_in = unpickler.find_class(module, name)
        assert type(stand_in).__module__ == "rnn_jax.data.safe_pickle", (module, name)
    with pytest.raises(music.UnsafePickleError, match=r"refused to load global numpy\.load"):
        unpickler.find_class("numpy", "load")


# --------------------------------------------------------------------------------------------
# Refused
# --------------------------------------------------------------------------------------------


class _RunsCommand:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


class _Evaluates:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return eval, (f"open({str(self.target)!r}, 'w').close()",)


class _LoadsNumpy:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return np.load, (str(self.target),)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("evil, refused", [
    (_RunsCommand, r"(posix|nt|os)\.system"),
    (_Evaluates, r"(__builtin__|builtins)\.eval"),
    (_LoadsNumpy, r"numpy\.load"),
])
def test_other_globals_refused_without_side_effects(tmp_path, protocol, evil, refused):
    target = tmp_path / "pwned"
    np.save(tmp_path / "real.npy", np.arange(3))
    payload = evil(tmp_path / "real.npy" if evil is _LoadsNumpy else target)
    if evil is _RunsCommand:
        payload = np.array([payload, 60], dtype=object)  # inside an object array
    dumped = dataset_with(payload, protocol)
    opcode = r"x\.pkl: refused pickle opcode (STACK_)?GLOBAL \("
    with pytest.raises(music.UnsafePickleError, match=opcode + refused):
        load(tmp_path, dumped)
    # the unpickler alone refuses them too (the second line of defence)
    with pytest.raises(music.UnsafePickleError, match=r"refused (dtype 'O8'|to load global " + refused + ")"):
        safe_pickle.SafeUnpickler(io.BytesIO(dumped), max_values=100, max_array_length=100).load()
    assert not target.exists()
    assert sorted(os.listdir(tmp_path)) == ["real.npy", "x.pkl"]


def test_stack_global_operands_are_followed_through_the_memo(tmp_path):
    # protocol 4: 'os' and 'system' memoized, popped, then fetched back for STACK_GLOBAL
    hidden = b"\x80\x04\x8c\x02os\x94\x8c\x06system\x9400h\x00h\x01\x93\x8c\x04true\x85R."
    with pytest.raises(music.UnsafePickleError, match=r"refused pickle opcode STACK_GLOBAL \(os\.system\)"):
        safe_pickle.check_opcodes(hidden)
    unknown = b"\x80\x04\x8c\x05numpy\x94h\x07\x93."  # the name is not a literal string
    with pytest.raises(music.UnsafePickleError, match=r"STACK_GLOBAL at byte \d+: its module and name must"):
        load(tmp_path, unknown)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("value, message", [
    (np.array([60, 64], dtype=object),
     r"refused dtype 'O8' \(object\): only integer \(i1-i8, u1-u8\) and float \(f2, f4, f8\) dtypes"),
    (np.array([(60,)], dtype=[("p", "<i4")]), r"refused dtype 'V4' \(void: structured"),
    (np.array([60, 61]).astype(np.complex128), r"refused dtype 'c16' \(complex\)"),
    (np.array([True]), r"refused dtype 'b1' \(bool\)"),
    pytest.param(np.array([60], np.longdouble), r"refused dtype 'f(12|16)' \((12|16)-byte float\)",
                 marks=pytest.mark.skipif(np.dtype(np.longdouble).itemsize == 8, reason="float64 here")),
    ([np.bool_(True)], r"refused dtype 'b1' \(bool\)"),
    ([np.complex64(60)], r"refused dtype 'c8' \(complex\)"),
    ([np.str_("C4")], r"refused dtype 'U2' \(unicode string\)"),
    ([np.datetime64("2020-01-01")], r"refused dtype 'M8' \(datetime\)"),
    (np.array([60], np.dtype("i8", metadata={"a": 1})), r"refused dtype 'i8': state version 4 \(metadata\)"),
])
def test_non_numeric_dtypes_refused(tmp_path, protocol, value, message):
    with pytest.raises(music.UnsafePickleError, match=r"x\.pkl: " + message):
        load(tmp_path, dataset_with(value, protocol))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_numeric_typestr_with_fields_or_subarray_refused(tmp_path, protocol):
    structured = dataset_with(np.array([(60,)], dtype=[("p", "<i4")]), protocol)
    with pytest.raises(music.UnsafePickleError, match=r"refused dtype 'i4' with fields \('p',\) \(a struct"):
        load(tmp_path, replace_text(structured, "V4", "i4"))
    subarray = dataset_with([np.dtype(("<i4", (2,)))], protocol)  # (an array would take its shape)
    with pytest.raises(music.UnsafePickleError, match=r"refused dtype 'i8' with a subarray"):
        load(tmp_path, replace_text(subarray, "V8", "i8"))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_wrong_byte_counts_refused(tmp_path, protocol):
    array = np.array([60, 64, 67], "<i8")
    short = replace_raw(dataset_with(array, protocol), array.tobytes(), array.tobytes()[:20])
    with pytest.raises(ValueError, match=r"x\.pkl: array of 3 int64 needs 24 bytes, got 20"):
        load(tmp_path, short)
    raw = np.int64(66).tobytes()
    long = replace_raw(dataset_with([np.int64(66)], protocol), raw, raw + b"\x00")
    with pytest.raises(ValueError, match=r"x\.pkl: scalar int64 needs 8 bytes, got 9"):
        load(tmp_path, long)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_arrays_must_be_1d_and_short(tmp_path, protocol):
    with pytest.raises(ValueError, match=r"x\.pkl: 2-D NumPy array \(shape \(2, 3\)\): only 1-D arrays \(one "
                                         r"time step of pitches\) are supported"):
        load(tmp_path, dataset_with(np.full((2, 3), 60), protocol))
    with pytest.raises(ValueError, match=r"0-D NumPy array"):
        load(tmp_path, dataset_with([np.array(60)], protocol))
    with pytest.raises(ValueError, match=r"NumPy array of 129 values: at most 128 are allowed"):
        load(tmp_path, dataset_with(np.arange(129) % 80, protocol))


def test_total_numpy_values_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(music, "MAX_NOTES", 5)
    with pytest.raises(ValueError, match=r"more than 5 NumPy values in the file"):
        load(tmp_path, dataset_with(np.array([60, 62, 64]), 4))


def test_numpy_pickle_still_validated_as_data(tmp_path):
    with pytest.raises(ValueError, match=r"split 'valid', sequence 0, step 1: pitch True \(bool\) is not a"):
        load(tmp_path, dataset_with([True], 4))
    with pytest.raises(ValueError, match=r"split 'valid', sequence 0, step 1: pitch 200 is outside"):
        load(tmp_path, dataset_with(np.array([200], np.uint8), 4))
    with pytest.raises(ValueError, match=r"split 'valid', sequence 0, step 1: expected a list of pitches, "
                                         r"got NoneType"):
        load(tmp_path, dataset_with(None, 4))


def test_misuse_of_the_stand_ins_refused(tmp_path):
    # BUILD on a global: would set attributes on a function elsewhere
    with pytest.raises(music.UnsafePickleError, match=r"refused BUILD on the global numpy\.dtype"):
        load(tmp_path, b"\x80\x02cnumpy\ndtype\n}b.")
    # an array from _reconstruct that never gets its data
    never_built = b"\x80\x03cnumpy._core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87R."
    with pytest.raises(ValueError, match=r"x\.pkl: a NumPy array from _reconstruct was never given its data"):
        load(tmp_path, never_built)
    # _codecs.encode with another codec
    with pytest.raises(ValueError, match=r"_codecs\.encode\(str, 'rot13'\): only text with 'latin1'"):
        load(tmp_path, b"\x80\x02cnumpy\ndtype\nc_codecs\nencode\nX\x01\x00\x00\x00a"
                       b"X\x05\x00\x00\x00rot13\x86R.")


def test_plain_pickles_still_refuse_numpy_only_opcodes(tmp_path):
    with pytest.raises(music.UnsafePickleError, match=r"refused pickle opcode GLOBAL \(_codecs\.encode\)"):
        load(tmp_path, pickle.dumps({"train": [[b"ab"]]}, protocol=2))
    with pytest.raises(music.UnsafePickleError, match=r"refused pickle opcode NEWFALSE"):
        load(tmp_path, pickle.dumps({"train": [[[False]]]}, protocol=4))


def test_huge_memo_index_refused_before_loading(tmp_path):
    # the unpickler would size its memo for index 2**31 - 1: gigabytes from a 9-byte file
    with pytest.raises(music.UnsafePickleError, match=r"LONG_BINPUT at byte 3: memo index 2147483647 is"):
        load(tmp_path, b"\x80\x02]r\xff\xff\xff\x7f.")
