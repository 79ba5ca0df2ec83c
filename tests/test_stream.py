"""The Stream V2 protocol (redml_reduce.acquire.protocol): messages round-trip, typed arrays follow
RFC 8746, compressed arrays decode with dectris-compression and with HDF5's own filters alike,
and anything malformed is a StreamError, never another exception or a huge allocation."""
import math

import cbor2
import numpy as np
import pytest

from redml_reduce.acquire import compression as comp, protocol as s
from redml_reduce.acquire.sender import StreamSender
from redml_reduce.background import BeamGeometry

GEOM = BeamGeometry(beam_x=101.3, beam_y=88.6, distance_mm=150.0, pixel_size_mm=0.075, wavelength_a=0.98)


def frame_of(rng, dtype, shape=(48, 70)):
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.normal(10, 3, shape).astype(dt)
    hi = min(np.iinfo(dt).max, 5000)
    return rng.integers(0 if dt.kind == "u" else -50, hi, shape).astype(dt)


def test_typed_array_tags_follow_rfc8746():
    # RFC 8746 table 2, a few by hand: 64 uint8, 65 uint16 BE, 69 uint16 LE, 70 uint32 LE,
    # 72 sint8, 74 sint32 BE, 78 sint32 LE, 81 float32 BE, 85 float32 LE, 86 float64 LE
    expect = {64: "u1", 65: ">u2", 69: "<u2", 70: "<u4", 71: "<u8", 72: "i1", 74: ">i4", 78: "<i4", 81: ">f4",
              85: "<f4", 86: "<f8", 84: "<f2"}
    for tag, dt in expect.items():
        assert s.typed_array_dtype(tag) == np.dtype(dt), tag
    assert s.typed_array_dtype(76) is None  # reserved
    assert s.typed_array_dtype(40) is None and s.typed_array_dtype(88) is None
    for dt in ("uint8", "uint16", "int16", "int32", "uint32", "float32", "float64"):
        tag = s.typed_array_tag(dt)
        assert s.typed_array_dtype(tag).newbyteorder("=") == np.dtype(dt)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "int32", "uint32", "float32"])
@pytest.mark.parametrize("compression", [None, "bslz4", "lz4"])
def test_image_round_trip(rng, dtype, compression):
    frame = frame_of(rng, dtype)
    raw = s.encode_image(frame, 17, series_id=3, series_unique_id="abc", compression=compression)
    assert raw[:3] == bytes.fromhex("d9d9f7")  # self-described CBOR, as DECTRIS sends
    msg = s.parse_message(raw)
    assert isinstance(msg, s.ImageMessage)
    assert (msg.series_id, msg.series_unique_id, msg.image_id) == (3, "abc", 17)
    a = msg.data["threshold_1"]
    assert a.compression == compression and a.shape == frame.shape
    back = a.decode()
    assert back.dtype == frame.dtype and back.tobytes() == frame.tobytes()
    if compression is not None:
        # the DECTRIS reference decoder and HDF5's own filter (hdf5plugin) agree byte for byte
        assert comp._decompress_h5(a.payload, compression, a.elem_size, a.nbytes) == frame.tobytes()


def test_big_endian_and_column_major_arrays(rng):
    frame = frame_of(rng, "uint16")
    be = cbor2.CBORTag(40, [list(frame.shape), cbor2.CBORTag(65, frame.astype(">u2").tobytes())])
    cm = cbor2.CBORTag(1040, [list(frame.shape), cbor2.CBORTag(69, frame.T.astype("<u2").tobytes())])
    for arr in (be, cm):
        raw = cbor2.dumps(cbor2.CBORTag(55799, {"type": "image", "series_id": 1, "image_id": 0,
                                                "data": {"c": arr}}))
        back = s.parse_message(raw).data["c"].decode()
        assert back.dtype == np.uint16 and np.array_equal(back, frame)


def test_start_message_geometry_and_mask(rng):
    mask = rng.random((40, 60)) < 0.05
    raw = s.encode_start((40, 60), "uint16", GEOM, series_id=9, number_of_images=12, pixel_mask=mask,
                         saturation_value=60000, detector_description="EIGER2 X 4M")
    st = s.parse_message(raw)
    assert isinstance(st, s.StartMessage)
    assert (st.series_id, st.shape, st.dtype, st.number_of_images) == (9, (40, 60), np.dtype("uint16"), 12)
    for k in ("beam_x", "beam_y", "distance_mm", "pixel_size_mm", "wavelength_a"):
        assert math.isclose(getattr(st.geometry, k), getattr(GEOM, k), rel_tol=1e-12), k
    assert np.array_equal(st.pixel_mask.decode() != 0, mask)
    assert st.saturation_value == 60000 and st.nxmx_options()["detector_name"] == "EIGER2 X 4M"


def test_start_message_dectris_style_fields():
    """An EIGER start message has no detector_distance: distance from detector_translation,
    wavelength from incident_energy when needed; no beam centre: no geometry, and it says why."""
    fields = {"type": "start", "series_id": 1, "series_unique_id": "x", "beam_center_x": 1000.5,
              "beam_center_y": 1100.25, "detector_translation": [0.0, 0.0, 0.2], "incident_energy": 12398.4198,
              "pixel_size_x": 7.5e-5, "pixel_size_y": 7.5e-5, "image_size_x": 2068, "image_size_y": 2164,
              "channels": ["threshold_1"]}
    st = s.parse_message(cbor2.dumps(cbor2.CBORTag(55799, fields)))
    assert math.isclose(st.geometry.distance_mm, 200.0) and math.isclose(st.geometry.wavelength_a, 1.0)
    assert st.shape == (2164, 2068) and st.dtype is None
    del fields["beam_center_x"]
    st = s.parse_message(cbor2.dumps(cbor2.CBORTag(55799, fields)))
    assert st.geometry is None and "beam_center_x" in st.geometry_error


def test_end_message():
    msg = s.parse_message(s.encode_end(4, "u4"))
    assert isinstance(msg, s.EndMessage) and (msg.series_id, msg.series_unique_id) == (4, "u4")


def _image_with(data_item):
    return cbor2.dumps(cbor2.CBORTag(55799, {"type": "image", "series_id": 1, "image_id": 0, "data": {"c": data_item}}))


def _bslz4_claiming(nbytes):
    """A bslz4 byte string whose HDF5 header declares nbytes."""
    return nbytes.to_bytes(8, "big") + (8192).to_bytes(4, "big") + b"\0" * 40


MALFORMED = {
    "garbage": b"\x00\x01hello",
    "empty": b"",
    "not a map": cbor2.dumps([1, 2, 3]),
    "no type": cbor2.dumps({"series_id": 1}),
    "unknown type": cbor2.dumps({"type": "calibration-v7"}),
    "image without data": cbor2.dumps({"type": "image", "series_id": 1, "image_id": 0}),
    "image without id": cbor2.dumps({"type": "image", "series_id": 1,
                                     "data": {"c": cbor2.CBORTag(40, [[2, 2], cbor2.CBORTag(69, b"\0" * 8)])}}),
    "negative image id": cbor2.dumps({"type": "image", "series_id": 1, "image_id": -3,
                                      "data": {"c": cbor2.CBORTag(40, [[2, 2], cbor2.CBORTag(69, b"\0" * 8)])}}),
    "3-D frame": _image_with(cbor2.CBORTag(40, [[2, 2, 2], cbor2.CBORTag(69, b"\0" * 16)])),
    "classical array": _image_with(cbor2.CBORTag(40, [[2, 2], [1, 2, 3, 4]])),
    "bad dimensions": _image_with(cbor2.CBORTag(40, [[2, -2], cbor2.CBORTag(69, b"\0" * 8)])),
    "huge dimensions": _image_with(cbor2.CBORTag(40, [[1 << 20, 1 << 20], cbor2.CBORTag(69, b"\0" * 8)])),
    "56500 not a triple": _image_with(cbor2.CBORTag(40, [[2, 2], cbor2.CBORTag(69, cbor2.CBORTag(56500, ["bslz4"]))])),
    "unknown algorithm": _image_with(cbor2.CBORTag(40, [[2, 2], cbor2.CBORTag(69, cbor2.CBORTag(
        56500, ["zstd", 2, b"\0" * 20]))])),
    "bslz4 element size": _image_with(cbor2.CBORTag(40, [[2, 2], cbor2.CBORTag(69, cbor2.CBORTag(
        56500, ["bslz4", 4, b"\0" * 20]))])),
    "typed array of text": _image_with(cbor2.CBORTag(40, [[2, 2], cbor2.CBORTag(69, "abcdefgh")])),
    "start with text series_id": cbor2.dumps({"type": "start", "series_id": "one"}),
    "start with bad channels": cbor2.dumps({"type": "start", "series_id": 1, "channels": "threshold_1"}),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_messages_are_stream_errors(name):
    with pytest.raises(s.StreamError):
        s.parse_message(MALFORMED[name])


def test_truncated_messages_are_stream_errors(rng):
    raw = s.encode_image(frame_of(rng, "uint16"), 5, compression="bslz4")
    cuts = sorted(set(np.linspace(0, len(raw) - 1, 60).astype(int)))
    for n in cuts:
        with pytest.raises(s.StreamError):
            s.parse_message(raw[:n])


@pytest.mark.parametrize("compression", ["bslz4", "lz4"])
def test_undecodable_payloads_fail_on_decode(rng, compression):
    """Parsing keeps compressed bytes as they are; decode() checks them: a header declaring
    another size (no allocation of it), or corrupt blocks, are StreamErrors."""
    frame = frame_of(rng, "uint16", (64, 64))
    good = comp.compress(frame, compression)
    for payload in (_bslz4_claiming(1 << 40), _bslz4_claiming(frame.nbytes * 2), good[:11],
                    good[:12] + bytes(len(good) - 12), good[:-7]):
        a = s.EncodedArray(frame.shape, frame.dtype, payload, compression, 2)
        with pytest.raises(s.StreamError):
            a.decode()
    raw = s.EncodedArray(frame.shape, frame.dtype, frame.tobytes()[:-2])
    with pytest.raises(s.StreamError):
        raw.decode()


def test_sender_and_receiver_over_zeromq(rng):
    import zmq

    frames = [frame_of(rng, "uint16") for _ in range(3)]
    with StreamSender("tcp://127.0.0.1:*") as sender:
        pull = zmq.Context.instance().socket(zmq.PULL)
        pull.connect(sender.endpoint)
        try:
            sender.start(frames[0].shape, frames[0].dtype, GEOM, number_of_images=3)
            for i, f in enumerate(frames):
                sender.image(f, i, compression="bslz4")
            sender.end()
            got = [s.parse_message(pull.recv()) for _ in range(5)]
        finally:
            pull.close(0)
    assert [m.type for m in got] == ["start", "image", "image", "image", "end"]
    assert len({m.series_unique_id for m in got}) == 1
    for m, f in zip(got[1:4], frames):
        assert m.data["threshold_1"].decode().tobytes() == f.tobytes()


# ---- hostile start fields: every field checked for type and range (issue: one start killed acquire) ----

def _start_with(**over):
    """A valid start message (geometry, 32 x 48 uint16) with fields replaced (None: removed)."""
    f = dict(cbor2.loads(s.encode_start((32, 48), "uint16", GEOM, number_of_images=4)))
    for k, v in over.items():
        if v is None:
            f.pop(k, None)
        else:
            f[k] = v
    return cbor2.dumps(cbor2.CBORTag(55799, f))


BIG = 10**400  # a CBOR bignum (tag 2)
HOSTILE_STARTS = {
    "image_dtype with a structured-dtype syntax error": {"image_dtype": "i4,,"},
    "image_dtype of a 10^10-element subarray": {"image_dtype": "(100000,100000)f8"},
    "image_dtype object": {"image_dtype": "O"},
    "image_dtype record": {"image_dtype": "u2,u2"},
    "bignum sensor_thickness": {"sensor_thickness": BIG},
    "bignum count_time": {"count_time": BIG},
    "bignum frame_time": {"frame_time": -BIG},
    "NaN count_time": {"count_time": math.nan},
    "negative count_time": {"count_time": -1.0},
    "image size beyond 2^20": {"image_size_x": 1 << 21},
    "image size beyond 2^27 pixels": {"image_size_x": 1 << 14, "image_size_y": 1 << 14},
    "image size of zero": {"image_size_x": 0},
    "half an image size": {"image_size_y": None},
    "bignum image size": {"image_size_x": BIG},
    "number_of_images beyond int64": {"number_of_images": 1 << 63},
    "bignum series_id": {"series_id": BIG},
    "bignum saturation_value": {"saturation_value": BIG},
    "JUNGFRAU calibration with a bignum energy": {"jungfrau_calibration": {"energy_keV": BIG}},
}


@pytest.mark.parametrize("name", sorted(HOSTILE_STARTS))
def test_hostile_start_fields_are_stream_errors(name):
    """Refused by the field checks themselves, not by parse_message's catch-all."""
    with pytest.raises(s.StreamError) as e:
        s.parse_message(_start_with(**HOSTILE_STARTS[name]))
    assert "unusable:" not in str(e.value), str(e.value)


@pytest.mark.parametrize("fields", [{"detector_distance": BIG}, {"detector_distance": None,
                                                                "detector_translation": [0.0, 0.0, BIG]},
                                    {"detector_distance": -0.1}, {"incident_wavelength": math.inf},
                                    {"incident_wavelength": None, "incident_energy": BIG},
                                    {"beam_center_x": BIG}, {"pixel_size_x": 0.0}])
def test_geometry_out_of_range_leaves_no_geometry_and_says_why(fields):
    """Geometry that cannot be used does not refuse the series: it has no geometry (the file
    is not NXmx), and the reason names the field."""
    st = s.parse_message(_start_with(**fields))
    assert st.geometry is None
    assert any(k.split("_")[0] in st.geometry_error for k in fields), st.geometry_error


def test_image_dtype_names_with_byte_order_suffix():
    for name, dt in (("uint16", "uint16"), ("uint32le", "uint32"), ("float32be", "float32"), ("int8", "int8")):
        assert s.parse_message(_start_with(image_dtype=name)).dtype == np.dtype(dt)


def test_pixel_mask_of_another_size_or_type_is_set_aside_undecoded():
    """A mask that does not fit the image size, or holds floats, is not decoded: the start
    stays usable without it and says why."""
    f = dict(cbor2.loads(_start_with()))
    for arr in (np.zeros((64, 48), np.uint32), np.zeros((32, 48), np.float64)):
        f["pixel_mask"] = {"threshold_1": s._tagged_array(arr)}
        st = s.parse_message(cbor2.dumps(cbor2.CBORTag(55799, f)))
        assert st.pixel_mask is None and "pixel_mask" in st.pixel_mask_error


def test_image_ids_are_cbor_uint64():
    """Every CBOR uint64 is an image id (2^63 and 2^64 - 1 too); a bignum is not."""
    frame = np.zeros((2, 2), np.uint16)
    for i in (0, 1 << 63, (1 << 64) - 1):
        assert s.parse_message(s.encode_image(frame, i)).image_id == i
    with pytest.raises(s.StreamError):
        s.parse_message(s.encode_image(frame, 1 << 64))


def test_parse_message_raises_only_stream_errors_for_odd_values():
    """Fields of unexpected types anywhere: a StreamError from the field checks, never
    another exception, and never one that only parse_message's catch-all stopped."""
    odd = [BIG, -BIG, math.nan, "x" * 100, [BIG], {"a": BIG}, b"\0" * 9, True, None, 2.5, [[[]]]]
    keys = ["series_id", "image_size_x", "image_dtype", "number_of_images", "beam_center_x", "detector_translation",
            "incident_energy", "pixel_size_x", "sensor_thickness", "count_time", "channels", "pixel_mask",
            "saturation_value", "detector_description", "sensor_material", "series_unique_id",
            "jungfrau_calibration"]
    for k in keys:
        for v in odd:
            try:
                s.parse_message(_start_with(**{k: v}))
            except s.StreamError as e:
                assert "unusable:" not in str(e), (k, v, str(e))
