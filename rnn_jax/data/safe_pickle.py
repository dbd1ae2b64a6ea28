"""Reading pickles of plain data and NumPy numbers without running any code from the file.

A pickle is a program: its ``GLOBAL``/``STACK_GLOBAL`` opcodes import any name and ``REDUCE``/``BUILD``
call it. :func:`loads` reads one in two steps, each enough on its own to refuse a hostile file:

1. :func:`check_opcodes` walks the opcodes without running them. Plain pickles (nested lists, tuples,
   dicts, strings and numbers) may use only :data:`ALLOWED_OPCODES`. The opcodes in
   :data:`NUMPY_OPCODES` (globals, calls, ``None``, booleans, bytes) are accepted only in a pickle that
   refers to one of NumPy's reconstructors, and every global it names must be in :data:`NUMPY_GLOBALS`
   or :data:`HELPER_GLOBALS` (``STACK_GLOBAL`` operands are followed through the memo).
2. :class:`SafeUnpickler` maps exactly those globals to small stand-ins defined here, never to NumPy's
   own functions, and imports nothing. The stand-ins accept numeric dtypes only (:data:`DTYPES`: signed
   and unsigned integers of 1-8 bytes, float16/32/64, either byte order), check every argument and
   state tuple, and decode the raw bytes themselves: a NumPy scalar becomes a Python ``int`` or
   ``float``, a 1-D array a list of them.

What NumPy emits, and what is accepted (``numpy.core`` in NumPy 1, ``numpy._core`` in NumPy 2):

* a scalar: ``numpy._core.multiarray.scalar(numpy.dtype(typestr, False, True) + BUILD state, bytes)``;
* an array: ``numpy._core.multiarray._reconstruct(numpy.ndarray, (0,), b'b')`` then ``BUILD`` with
  ``(1, shape, dtype, is_fortran, bytes)`` (or the older state without the leading version);
* an array with protocol 5: ``numpy._core.numeric._frombuffer(bytearray, dtype, shape, order)``;
* bytes with protocols 0-2: ``_codecs.encode(text, 'latin1')``, and ``__builtin__.bytes()`` when empty.

Anything else raises :class:`UnsafePickleError` (a refused opcode, global, dtype, or a ``BUILD`` on a
stand-in) or :class:`PickleDataError` (a malformed or unsupported value: a wrong byte count, an array
that is not 1-D or too long), before anything from the file could run.
"""

from __future__ import annotations

import io
import pickle
import pickletools

import numpy as np

from rnn_jax.errors import InputError

__all__ = ["ALLOWED_OPCODES", "DTYPES", "HELPER_GLOBALS", "NUMPY_GLOBALS", "NUMPY_OPCODES",
           "PickleDataError", "SafeUnpickler", "UnsafePickleError", "check_opcodes", "loads"]


class UnsafePickleError(pickle.UnpicklingError, InputError):
    """A pickle used something refused (an opcode, a global, a dtype); nothing was imported or called.

    Also an :class:`~rnn_jax.errors.InputError`: the file the user gave is at fault, not the program.
    """


class PickleDataError(InputError):
    """A NumPy value in a pickle is malformed or unsupported (byte count, shape, length, state)."""


# The opcodes a pickle of nested lists/tuples/dicts of strings and numbers needs (protocols 0-5).
ALLOWED_OPCODES = frozenset([
    "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP",
    "EMPTY_DICT", "DICT", "SETITEM", "SETITEMS", "EMPTY_LIST", "LIST", "APPEND", "APPENDS",
    "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
    "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
    "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "GET", "BINGET", "LONG_BINGET",
])
# The further opcodes NumPy's reductions use; only a pickle naming a NumPy reconstructor may use them
# (None and booleans appear in dtype states, bytes hold the raw data, BYTEARRAY8 is protocol 5's buffer).
NUMPY_OPCODES = frozenset([
    "GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD", "NONE", "NEWTRUE", "NEWFALSE",
    "SHORT_BINBYTES", "BINBYTES", "BINBYTES8", "BYTEARRAY8",
])

_CORES = ("numpy.core", "numpy._core")  # NumPy 1 and NumPy 2 spell the module paths differently
NUMPY_GLOBALS = frozenset([("numpy", "dtype"), ("numpy", "ndarray")]
                          + [(f"{core}.multiarray", "scalar") for core in _CORES]
                          + [(f"{core}.multiarray", "_reconstruct") for core in _CORES]
                          + [(f"{core}.numeric", "_frombuffer") for core in _CORES])
# How protocols 0-2 write ``bytes`` (``__builtin__`` is Python 2's and protocol 2's name for builtins).
HELPER_GLOBALS = frozenset([("_codecs", "encode"), ("__builtin__", "bytes"), ("builtins", "bytes")])

# NumPy's dtype reduction writes kind + item size; these are the only ones decoded.
DTYPES = {f"{kind}{size}": f"{name}{8 * size}"
          for kind, name, sizes in (("i", "int", (1, 2, 4, 8)), ("u", "uint", (1, 2, 4, 8)),
                                    ("f", "float", (2, 4, 8)))
          for size in sizes}
_KINDS = {"b": "bool", "i": "integer", "u": "unsigned integer", "f": "float", "c": "complex",
          "O": "object", "V": "void: structured, subarray or raw bytes", "S": "byte string",
          "a": "byte string", "U": "unicode string", "M": "datetime", "m": "timedelta"}
_PLAIN = "only plain lists, tuples, dicts, strings and numbers (and NumPy numeric scalars and 1-D arrays)"

# --------------------------------------------------------------------------------------------
# Step 1: the opcodes, checked without running them
# --------------------------------------------------------------------------------------------

_MARK = object()  # a MARK on the simulated stack
_UNKNOWN = object()  # any value whose content the check does not follow
_TEXT_OPCODES = frozenset(["UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"])


def _global_allowed(module: str, name: str) -> bool:
    return (module, name) in NUMPY_GLOBALS or (module, name) in HELPER_GLOBALS


def _refuse_global(opcode: str, module, name, pos: int):
    return UnsafePickleError(f"refused pickle opcode {opcode} ({module}.{name}) at byte {pos}: {_PLAIN} "
                             "are allowed; no global other than NumPy's dtype, scalar and array "
                             "reconstructors")


def _effect(op: pickletools.OpcodeInfo) -> tuple[bool, int, int]:
    """(pops through a MARK?, values popped (below the MARK, if any), values pushed)."""
    before = op.stack_before
    if pickletools.markobject in before:
        return True, before.index(pickletools.markobject), len(op.stack_after)
    return False, len(before), len(op.stack_after)


_EFFECTS = {op.name: _effect(op) for op in pickletools.opcodes}


def _simulate(name: str, arg, stack: list, memo: dict) -> None:
    """Applies one opcode's effect on the stack, following text values (for ``STACK_GLOBAL``)."""
    if name in _TEXT_OPCODES:
        stack.append(arg)
    elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
        if not stack:
            raise pickle.UnpicklingError(f"{name} on an empty stack")
        memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
    elif name in ("GET", "BINGET", "LONG_BINGET"):
        stack.append(memo.get(arg, _UNKNOWN))
    elif name == "DUP":
        if not stack:
            raise pickle.UnpicklingError("DUP on an empty stack")
        stack.append(stack[-1])
    elif name == "MARK":
        stack.append(_MARK)
    else:
        to_mark, count, pushed = _EFFECTS[name]
        while to_mark:
            if not stack:
                raise pickle.UnpicklingError(f"{name} without a MARK")
            to_mark = stack.pop() is not _MARK
        if len(stack) < count:
            raise pickle.UnpicklingError(f"{name} needs {count} values on the stack")
        if count:
            del stack[-count:]
        stack.extend([_UNKNOWN] * pushed)


def check_opcodes(data: bytes) -> None:
    """Refuses, before loading, a pickle that could build anything but plain data and NumPy numbers.

    Raises :class:`UnsafePickleError` naming the opcode (and global) and its byte offset. Memo indices
    are bounded by the number of opcodes before them (picklers number memo entries from 0).
    """
    stack: list = []
    memo: dict = {}
    follow = b"\x93" in data  # the stack matters only to STACK_GLOBAL (opcode 0x93)
    names_numpy = False
    first_numpy_opcode = None
    for count, (opcode, arg, pos) in enumerate(pickletools.genops(data)):
        name = opcode.name
        if name in ("PUT", "BINPUT", "LONG_BINPUT") and arg > count:
            # the unpickler sizes its memo by the largest index: a few bytes could ask for gigabytes
            raise UnsafePickleError(f"refused pickle opcode {name} at byte {pos}: memo index {arg} is "
                                    f"beyond the {count} opcodes before it")
        if name in NUMPY_OPCODES:
            if not first_numpy_opcode:
                what = f"{name} ({arg.replace(' ', '.')})" if name == "GLOBAL" else name
                first_numpy_opcode = what, pos
        elif name not in ALLOWED_OPCODES:
            what = f" ({arg})" if isinstance(arg, str) else ""
            raise UnsafePickleError(f"refused pickle opcode {name}{what} at byte {pos}: {_PLAIN} are allowed")
        if name == "GLOBAL":
            module, _, attr = arg.partition(" ")
        elif name == "STACK_GLOBAL":
            module, attr = stack[-2:] if len(stack) >= 2 else (_UNKNOWN, _UNKNOWN)
            if not (isinstance(module, str) and isinstance(attr, str)):
                raise UnsafePickleError(f"refused pickle opcode STACK_GLOBAL at byte {pos}: its module "
                                        "and name must be literal strings")
        if name in ("GLOBAL", "STACK_GLOBAL"):
            if not _global_allowed(module, attr):
                raise _refuse_global(name, module, attr, pos)
            names_numpy = names_numpy or (module, attr) in NUMPY_GLOBALS
        if follow:
            _simulate(name, arg, stack, memo)
    if first_numpy_opcode and not names_numpy:
        name, pos = first_numpy_opcode
        raise UnsafePickleError(f"refused pickle opcode {name} at byte {pos}: {_PLAIN} are allowed")


# --------------------------------------------------------------------------------------------
# Step 2: stand-ins for NumPy's reconstructors
# --------------------------------------------------------------------------------------------


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _flag(value) -> bool:
    """A pickled boolean: ``True``/``False``, or ``1``/``0`` as Python 2's NumPy wrote them."""
    return isinstance(value, int) and value in (0, 1)


def _raw_bytes(value, what: str) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):  # a Python 2 str, read as latin-1 text
        try:
            return value.encode("latin1")
        except UnicodeEncodeError:
            raise PickleDataError(f"{what}: the data is text that is not latin-1") from None
    raise PickleDataError(f"{what}: the data must be bytes, got {type(value).__name__}")


class _Dtype:
    """Stand-in for ``numpy.dtype(typestr, align, copy)``; ``BUILD`` then sets its byte order."""

    __slots__ = ("dtype", "typestr")

    def __init__(self, typestr):
        if not isinstance(typestr, str):
            raise UnsafePickleError(f"refused dtype {typestr!r:.40}: its type string must be text")
        if typestr not in DTYPES:
            kind, size = typestr[:1], typestr[1:]
            what = _KINDS.get(kind, "unknown kind")
            if kind in "iuf" and size.isdigit():
                what = f"{size}-byte {what}"
            raise UnsafePickleError(f"refused dtype {typestr!r:.20} ({what}): only integer (i1-i8, u1-u8) "
                                    "and float (f2, f4, f8) dtypes are allowed")
        self.typestr = typestr
        self.dtype = None

    def __repr__(self) -> str:
        return f"<NumPy dtype {self.typestr!r}>"

    def __setstate__(self, state) -> None:
        where = f"dtype {self.typestr!r}"
        if self.dtype is not None:
            raise PickleDataError(f"{where} was given a state twice")
        if not isinstance(state, tuple) or not state or not _is_int(state[0]):
            raise PickleDataError(f"{where}: the state must be a tuple starting with a version, "
                                  f"got {state!r:.80}")
        if state[0] != 3 or len(state) != 8:
            extra = " (metadata)" if state[0] == 4 else ""
            raise UnsafePickleError(f"refused {where}: state version {state[0]}{extra} with {len(state)} "
                                    "items; only version 3, (3, byte order, None, None, None, -1, -1, 0)")
        _, order, subarray, names, fields, elsize, alignment, flags = state
        if subarray is not None:
            raise UnsafePickleError(f"refused {where} with a subarray: only scalar numeric dtypes")
        if names is not None or fields is not None:
            raise UnsafePickleError(f"refused {where} with fields {names!r:.60} (a structured dtype): "
                                    "only plain integer and float dtypes are allowed")
        if not (_is_int(elsize) and elsize == -1 and _is_int(alignment) and alignment == -1):
            raise UnsafePickleError(f"refused {where} with item size {elsize!r:.20} and alignment "
                                    f"{alignment!r:.20}: NumPy writes -1 and -1 for numeric dtypes")
        if not (_is_int(flags) and flags == 0):
            raise UnsafePickleError(f"refused {where} with flags {flags!r:.20}: numeric dtypes have flags 0 "
                                    "(objects and fields set them)")
        size = int(self.typestr[1:])
        if order not in (("|", "<", ">") if size == 1 else ("<", ">")):
            raise PickleDataError(f"{where}: byte order {order!r:.20} is not one of '<', '>'"
                                  + (" or '|'" if size == 1 else ""))
        self.dtype = np.dtype(order + self.typestr)  # both parts checked against fixed lists above

    def checked(self, what: str) -> np.dtype:
        if self.dtype is None:
            raise PickleDataError(f"{what}: dtype {self.typestr!r} was never given its byte order (BUILD)")
        return self.dtype


def _dtype_of(value, what: str) -> np.dtype:
    if not isinstance(value, _Dtype):
        raise PickleDataError(f"{what}: expected a numpy.dtype, got {type(value).__name__}")
    return value.checked(what)


class _Array(list):
    """Stand-in for the empty array ``_reconstruct`` makes; ``BUILD`` fills it with the decoded values."""

    __slots__ = ("_reader", "built")

    def __init__(self, reader: SafeUnpickler):
        super().__init__()
        self._reader = reader
        self.built = False

    def __setstate__(self, state) -> None:
        if self.built or len(self):
            raise PickleDataError("a NumPy array was given data twice")
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise PickleDataError(f"NumPy array state must be (version, shape, dtype, fortran, data), "
                                  f"got {state!r:.80}")
        if len(state) == 5:
            if not (_is_int(state[0]) and state[0] == 1):
                raise PickleDataError(f"NumPy array state version {state[0]!r:.20} (only 1 is known)")
            state = state[1:]
        shape, dtype, fortran, data = state
        dtype = _dtype_of(dtype, "NumPy array")
        if not _flag(fortran):
            raise PickleDataError(f"NumPy array: the fortran-order flag must be a boolean, "
                                  f"got {fortran!r:.20}")
        self[:] = self._reader.decode_array(shape, dtype, data)
        self.built = True


class _StandIn:
    """What :meth:`SafeUnpickler.find_class` returns for an allowed global: a checked callable."""

    __slots__ = ("_arity", "_function", "qualname")

    def __init__(self, qualname: str, function, arity: tuple[int, ...]):
        self.qualname = qualname
        self._function = function
        self._arity = arity

    def __call__(self, *args):
        if len(args) not in self._arity:
            expected = " or ".join(str(n) for n in self._arity)
            raise PickleDataError(f"{self.qualname} called with {len(args)} arguments (expected {expected})")
        return self._function(*args)

    def __setstate__(self, state) -> None:
        raise UnsafePickleError(f"refused BUILD on the global {self.qualname}")

    def __repr__(self) -> str:
        return f"<stand-in for {self.qualname}>"


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds only built-in containers, strings, numbers and NumPy numbers.

    Every opcode that would import or call something goes through :meth:`find_class` (``GLOBAL``,
    ``STACK_GLOBAL``, the ``EXT*`` copyreg codes): it refuses every global except the NumPy
    reconstructors in :data:`NUMPY_GLOBALS` and the bytes helpers in :data:`HELPER_GLOBALS`, which map
    to stand-ins defined in this module, so ``REDUCE`` and ``BUILD`` never reach anything else.
    Persistent ids are refused by the base class. Arrays are bounded: at most ``max_array_length``
    values each and ``max_values`` decoded values in all.
    """

    def __init__(self, file, *, max_values: int = 20_000_000, max_array_length: int = 1 << 20, **kwargs):
        super().__init__(file, **kwargs)
        self.max_values = max_values
        self.max_array_length = max_array_length
        self.values = 0
        self._arrays: list[_Array] = []

    def find_class(self, module, name):
        if not (isinstance(module, str) and isinstance(name, str) and _global_allowed(module, name)):
            raise UnsafePickleError(f"refused to load global {module}.{name}: {_PLAIN} are allowed")
        qualname = f"{module}.{name}"
        build, arity = {
            "dtype": (self._dtype, (1, 2, 3)), "ndarray": (self._ndarray, ()),
            "scalar": (self._scalar, (2,)), "_reconstruct": (self._reconstruct, (3,)),
            "_frombuffer": (self._frombuffer, (4,)), "encode": (self._encode, (2,)), "bytes": (bytes, (0,)),
        }[name]
        return _StandIn(qualname, build, arity)

    def load(self):
        obj = super().load()
        arrays, self._arrays = self._arrays, []
        if any(not array.built for array in arrays):
            raise PickleDataError("a NumPy array from _reconstruct was never given its data (BUILD)")
        for array in arrays:
            array._reader = None  # no reference cycle through the returned data
        return obj

    # The stand-ins ------------------------------------------------------------------------

    @staticmethod
    def _dtype(typestr, align=False, copy=True) -> _Dtype:
        if not (_flag(align) and _flag(copy)):
            raise PickleDataError(f"numpy.dtype({typestr!r:.20}, ...): align and copy must be booleans")
        return _Dtype(typestr)

    @staticmethod
    def _ndarray():
        raise PickleDataError("numpy.ndarray may only be passed to _reconstruct")

    def _count(self, n: int) -> None:
        self.values += n
        if self.values > self.max_values:
            raise PickleDataError(f"more than {self.max_values} NumPy values in the file")

    def _scalar(self, dtype, data):
        dtype = _dtype_of(dtype, "NumPy scalar")
        data = _raw_bytes(data, "NumPy scalar")
        if len(data) != dtype.itemsize:
            raise PickleDataError(f"scalar {dtype.name} needs {dtype.itemsize} bytes, got {len(data)}")
        self._count(1)
        return np.frombuffer(data, dtype)[0].item()

    def _reconstruct(self, subtype, shape, typecode) -> _Array:
        if not (isinstance(subtype, _StandIn) and subtype.qualname == "numpy.ndarray"):
            raise PickleDataError(f"_reconstruct of {subtype!r:.60}: only numpy.ndarray is allowed")
        if shape != (0,) or typecode not in (b"b", "b"):
            raise PickleDataError(f"_reconstruct(ndarray, {shape!r:.40}, {typecode!r:.20}): NumPy writes "
                                  "(0,) and b'b' and gives the array its data in BUILD")
        array = _Array(self)
        self._arrays.append(array)
        return array

    def _frombuffer(self, buffer, dtype, shape, order) -> list:
        dtype = _dtype_of(dtype, "NumPy array")
        if order not in ("C", "F"):
            raise PickleDataError(f"NumPy array: order {order!r:.20} is not 'C' or 'F'")
        if not isinstance(buffer, (bytes, bytearray)):
            raise PickleDataError(f"NumPy array: the buffer must be bytes, got {type(buffer).__name__}")
        return self.decode_array(shape, dtype, buffer)

    @staticmethod
    def _encode(text, encoding) -> bytes:
        if not isinstance(text, str) or encoding != "latin1":
            raise PickleDataError(f"_codecs.encode({type(text).__name__}, {encoding!r:.20}): only text "
                                  "with 'latin1' (how protocols 0-2 write bytes)")
        return _raw_bytes(text, "_codecs.encode")

    def decode_array(self, shape, dtype: np.dtype, data) -> list:
        """The values of a 1-D array of ``dtype`` from its raw bytes, as Python numbers."""
        if not (isinstance(shape, tuple) and all(_is_int(n) for n in shape)):
            raise PickleDataError(f"NumPy array shape {shape!r:.40} is not a tuple of integers")
        if len(shape) != 1:
            raise PickleDataError(f"{len(shape)}-D NumPy array (shape {shape!r:.40}): only 1-D arrays (one "
                                  "time step of pitches) are supported; a sequence must be a list of steps")
        (n,) = shape
        if not 0 <= n <= self.max_array_length:
            raise PickleDataError(f"NumPy array of {n} values: at most {self.max_array_length} are allowed")
        data = _raw_bytes(data, "NumPy array")
        if len(data) != n * dtype.itemsize:
            raise PickleDataError(f"array of {n} {dtype.name} needs {n * dtype.itemsize} bytes, "
                                  f"got {len(data)}")
        self._count(n)
        return np.frombuffer(data, dtype).tolist()


def loads(data: bytes, *, max_values: int = 20_000_000, max_array_length: int = 1 << 20):
    """Checks a pickle's opcodes, then loads it with :class:`SafeUnpickler` (Python 2 text as latin-1)."""
    check_opcodes(data)
    return SafeUnpickler(io.BytesIO(data), encoding="latin1", max_values=max_values,
                         max_array_length=max_array_length).load()
