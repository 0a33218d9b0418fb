"""The NumPy-only .safetensors reader: every dtype read back exactly, damaged headers refused naming the file."""
import json
import re
import struct

import numpy as np
import pytest

from passl_tl.utils.safetensors_file import load_safetensors

# NumPy dtype name -> safetensors dtype (BF16 has no NumPy dtype: written as uint16 bit patterns)
SAFETENSORS_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "int64": "I64", "int32": "I32",
                      "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def write_raw(path, header: bytes, buffer: bytes = b"", length: int | None = None) -> str:
    """An 8-byte little-endian header length (``length``, else the header's), the header, the buffer."""
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + buffer)
    return str(path)


def write_safetensors(path, tensors: dict, bf16=(), metadata=None) -> str:
    """What safetensors' ``save_file`` writes: a JSON header padded with spaces to 8 bytes, then the
    tensors' little-endian bytes back to back. Names in ``bf16`` hold uint16 bfloat16 bit patterns."""
    header, chunks, offset = ({} if metadata is None else {"__metadata__": metadata}), [], 0
    for name, array in tensors.items():
        array = np.asarray(array)
        data = array.astype(array.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": "BF16" if name in bf16 else SAFETENSORS_DTYPES[array.dtype.name],
                        "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    return write_raw(path, text + b" " * (-len(text) % 8), b"".join(chunks))


def test_every_dtype_reads_back_exactly(tmp_path):
    rs = np.random.RandomState(0)
    tensors = {
        "i8": np.array([-128, -1, 0, 127], np.int8),  # first: the float tensors after it start unaligned
        "f64": rs.standard_normal((2, 3)),
        "f32": rs.standard_normal((3, 1, 2)).astype(np.float32),
        "f16": np.array([[0.5, -65504.0], [np.inf, 6e-8]], np.float16),
        "i64": np.array([-2 ** 62, -1, 2 ** 40 + 3], np.int64),
        "i32": np.array([-2 ** 31, 2 ** 31 - 1], np.int32),
        "i16": np.array([[-32768], [32767]], np.int16),
        "u8": np.array([0, 1, 255], np.uint8),
        "bool": np.array([[True, False, True]]),
        "scalar": np.array(7.25, np.float32),
        "empty": np.zeros((0, 3), np.float32),
    }
    # bfloat16 bits -> the float32 with those bits as its high half
    bf16 = {0x3F80: 1.0, 0xC000: -2.0, 0x4049: 3.140625, 0x8000: -0.0, 0x7F80: np.inf, 0x0001: 2.0 ** -133}
    tensors["bf16"] = np.array(list(bf16), np.uint16).reshape(2, 3)
    path = write_safetensors(tmp_path / "all.safetensors", tensors, bf16={"bf16"}, metadata={"format": "pt"})
    read = load_safetensors(path)
    assert list(read) == list(tensors)
    for name, expected in tensors.items():
        if name == "bf16":
            expected = np.array(list(bf16.values()), np.float32).reshape(2, 3)
        assert type(read[name]) is np.ndarray and read[name].flags.writeable, name
        assert read[name].dtype == expected.dtype and read[name].shape == expected.shape, name
        np.testing.assert_array_equal(read[name], expected, err_msg=name)
    assert np.signbit(read["bf16"][1, 0])  # -0.0 kept


def test_bf16_is_the_high_half_of_float32(tmp_path):
    values = np.random.RandomState(1).standard_normal(64).astype(np.float32)
    bits = (values.view(np.uint32) >> 16).astype(np.uint16)
    read = load_safetensors(write_safetensors(tmp_path / "w.safetensors", {"w": bits}, bf16={"w"}))["w"]
    assert read.dtype == np.float32
    np.testing.assert_array_equal(read.view(np.uint32), bits.astype(np.uint32) << 16)
    np.testing.assert_allclose(read, values, rtol=2 ** -7)  # truncated to 8 significant bits


def test_arrays_outlive_the_file(tmp_path):
    path = write_safetensors(tmp_path / "w.safetensors", {"w": np.arange(4, dtype=np.float32)})
    read = load_safetensors(path)
    (tmp_path / "w.safetensors").write_bytes(b"")
    read["w"][0] = 9
    np.testing.assert_array_equal(read["w"], [9, 1, 2, 3])


def f32(shape, begin, end):
    return {"dtype": "F32", "shape": shape, "data_offsets": [begin, end]}


# (case, header: bytes or entries to encode, buffer, header length written, what the message says)
HOSTILE = [
    ("header length beyond the file", b"{}", b"", 4096,
     r"header length 4096 runs past the end of the file \(10 bytes\)"),
    ("bad JSON", b'{"w": {"dtype": "F32",', b"", None, "the safetensors header is not UTF-8 JSON"),
    ("not UTF-8", b'{"\xff\xfe": 1}', b"", None, "the safetensors header is not UTF-8 JSON"),
    ("not an object", b"[1, 2]", b"", None, "the safetensors header must be a JSON object, got list"),
    ("entry not an object", {"w": [0, 16]}, bytes(16), None, "tensor 'w': expected an object with dtype"),
    ("unknown dtype", {"w": {"dtype": "C64", "shape": [2], "data_offsets": [0, 16]}}, bytes(16), None,
     "tensor 'w': unknown dtype 'C64'"),
    ("negative dimension", {"w": f32([-1, 4], 0, 16)}, bytes(16), None,
     r"tensor 'w': shape must be a list of non-negative integers, got \[-1, 4\]"),
    ("end beyond the buffer", {"w": f32([8], 0, 32)}, bytes(16), None,
     r"tensor 'w': data_offsets \[0, 32\] out of range: .* <= 16 \(the data buffer's size\)"),
    ("begin after end", {"w": f32([1], 12, 8)}, bytes(16), None, r"data_offsets \[12, 8\] out of range"),
    ("negative begin", {"w": f32([4], -4, 12)}, bytes(16), None, r"data_offsets \[-4, 12\] out of range"),
    ("offsets not integers", {"w": f32([4], 0.0, 16.0)}, bytes(16), None, r"data_offsets \[0.0, 16.0\] out of range"),
    ("size not shape * itemsize", {"w": f32([3], 0, 16)}, bytes(16), None,
     r"tensor 'w': data_offsets \[0, 16\] span 16 bytes, but F32 of shape \[3\] needs 12"),
    ("overlapping", {"a": f32([2], 0, 8), "b": f32([2], 4, 12)}, bytes(16), None,
     r"tensors 'a' \[0, 8\] and 'b' \[4, 12\] overlap in the data buffer"),
]


@pytest.mark.parametrize("case, header, buffer, length, message", HOSTILE, ids=[case[0] for case in HOSTILE])
def test_damaged_files_are_refused_naming_the_file(tmp_path, case, header, buffer, length, message):
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path = write_raw(tmp_path / "bad.safetensors", text, buffer, length)
    with pytest.raises(ValueError, match=re.escape(path) + ": .*" + message):
        load_safetensors(path)


def test_too_short_for_the_header_length(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x02\x00\x00")
    with pytest.raises(ValueError, match=re.escape(str(path)) + r": not a safetensors file: 3 bytes, fewer than "
                                                                 r"the 8-byte header length"):
        load_safetensors(str(path))


def test_empty_tensors_may_share_an_offset(tmp_path):
    header = {"a": f32([0], 4, 4), "b": f32([1], 0, 4), "c": f32([0, 2], 4, 4)}
    read = load_safetensors(write_raw(tmp_path / "w.safetensors", json.dumps(header).encode(),
                                      np.float32([1.5]).tobytes()))
    assert read["a"].shape == (0,) and read["c"].shape == (0, 2)
    np.testing.assert_array_equal(read["b"], [1.5])
