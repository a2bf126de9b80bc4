"""Files we read are bounded before they are used (issue 25, item 4): hostile files built small are refused quickly,
naming the file and the limit, before memory or time is spent on what they claim."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import time
import zipfile

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_alnet.io import bioimageio_package as package_module
from napari_alnet.io import weights as weights_module
from napari_alnet.io.weights import WeightsError, read_weights
from napari_alnet.model import ALNet, ALNetConfig
from napari_alnet.model.config import LIMITS, MAX_PARAMETERS
from napari_alnet.model.metadata import ModelMetadata

SECONDS = 5.0  # "quickly": each hostile file is refused within this (the probe's cases ran for minutes)


def _rdf(weights: str = "weights.pt", sha256: str | None = None) -> dict:
    ours = ModelMetadata(config=ALNetConfig()).to_strings() | {"form": "fused"}
    entry = {"source": weights, **({"sha256": sha256} if sha256 else {})}
    return {"type": "model", "name": "hostile", "config": {"napari_alnet": ours},
            "weights": {"pytorch_state_dict": entry}}


def _zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _refused_quickly(path, *match: str) -> str:
    start = time.perf_counter()
    with pytest.raises(WeightsError) as info:
        read_weights(path)
    assert time.perf_counter() - start < SECONDS
    message = str(info.value)
    assert str(path) in message
    for m in match:
        assert m in message, message
    return message


def _lie_about_size(path, member: str, claimed: int) -> None:
    """Patch the zip's central directory so that ``member``'s uncompressed size reads ``claimed``."""
    data = bytearray(path.read_bytes())
    entry = data.find(b"PK\x01\x02")
    while entry != -1:
        name_len = struct.unpack_from("<H", data, entry + 28)[0]
        if bytes(data[entry + 46:entry + 46 + name_len]).decode() == member:
            struct.pack_into("<I", data, entry + 24, claimed)
            path.write_bytes(bytes(data))
            return
        entry = data.find(b"PK\x01\x02", entry + 4)
    raise AssertionError(f"{member} not in the central directory")


def test_a_zip_member_claiming_gigabytes_is_refused_before_it_is_read(tmp_path):
    path = _zip(tmp_path / "big.zip", {"rdf.yaml": yaml.safe_dump(_rdf()).encode(), "weights.pt": b"x" * 1000})
    _lie_about_size(path, "weights.pt", 1_600_000_000)
    _refused_quickly(path, "weights.pt", "1525.9 MB", f"limit {package_module.MAX_WEIGHTS_BYTES >> 20} MB")


def test_a_member_larger_than_its_directory_says_is_refused_not_read_on(tmp_path):
    path = _zip(tmp_path / "liar.zip", {"rdf.yaml": yaml.safe_dump(_rdf()).encode(), "weights.pt": b"x" * 4096})
    _lie_about_size(path, "weights.pt", 10)  # the read stops at the size the directory states: the CRC then fails
    _refused_quickly(path, "'weights.pt'", "Bad CRC")


def test_a_folder_package_member_is_bounded_by_its_file_size(tmp_path, monkeypatch):
    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / "rdf.yaml").write_text(yaml.safe_dump(_rdf()))
    (folder / "weights.pt").write_bytes(b"x" * 4096)
    monkeypatch.setattr(package_module, "MAX_WEIGHTS_BYTES", 1024)
    _refused_quickly(folder, "weights.pt is 0.0 MB or more (limit 0 MB")


def test_the_checksum_is_checked_before_the_weights_are_unpickled(tmp_path):
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, buffer)
    path = _zip(tmp_path / "altered.zip", {"rdf.yaml": yaml.safe_dump(_rdf(sha256="0" * 64)).encode(),
                                           "weights.pt": buffer.getvalue()})
    _refused_quickly(path, "does not match the sha256")
    right = hashlib.sha256(buffer.getvalue()).hexdigest()
    good = _zip(tmp_path / "good.zip", {"rdf.yaml": yaml.safe_dump(_rdf(sha256=right)).encode(),
                                        "weights.pt": buffer.getvalue()})
    tensors, _meta, form = read_weights(good)
    assert form == "fused" and torch.equal(tensors["w"], torch.zeros(3))


BILLION_LAUGHS = "\n".join(["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]",
                            *[f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]"
                              for i in range(9)],
                            "type: model"])


@pytest.mark.parametrize("text", [BILLION_LAUGHS, "type: &t model\nname: *t\n", "[" * 5000 + "]" * 5000],
                         ids=["billion-laughs", "one-alias", "deep-nesting"])
def test_a_description_with_aliases_or_deep_nesting_is_refused_quickly(tmp_path, text):
    assert len(text.encode()) < 50_000
    path = _zip(tmp_path / "bomb.zip", {"rdf.yaml": text.encode(), "weights.pt": b""})
    _refused_quickly(path, "rdf.yaml")


def test_billion_laughs_is_small_and_would_expand(tmp_path):
    """The hostile document is what its name says: ~1 KB, refused without expansion (9**10 entries if expanded)."""
    assert len(BILLION_LAUGHS) < 1200 and BILLION_LAUGHS.count("*") == 81


def test_an_oversized_description_is_refused_by_its_size(tmp_path):
    big = b"type: model\nname: '" + b"x" * (package_module.MAX_DESCRIPTION_BYTES + 10) + b"'\n"
    path = _zip(tmp_path / "huge.zip", {"rdf.yaml": big})
    _refused_quickly(path, "rdf.yaml", "limit 4 MB")


# --- safetensors headers ------------------------------------------------------------------------------------------

def _safetensors(path, header: dict, data: bytes = b"", *, claimed: int | None = None):
    body = json.dumps(header).encode()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", claimed if claimed is not None else len(body)) + body + data)
    return path


def _our_header(config: dict | None = None, **tensors) -> dict:
    strings = ModelMetadata(config=ALNetConfig()).to_strings()
    if config is not None:
        strings["config"] = json.dumps(config)
    return {"__metadata__": strings, **tensors}


def test_a_header_claiming_more_than_the_limit_is_refused_unread(tmp_path):
    path = tmp_path / "huge.safetensors"
    claimed = weights_module.MAX_HEADER_BYTES + 1
    with open(path, "wb") as fh:  # a sparse file as long as the header claims: only its length is read
        fh.write(struct.pack("<Q", claimed) + b"{")
        fh.truncate(claimed + 8)
    _refused_quickly(path, f"claims {claimed} bytes", f"limit {weights_module.MAX_HEADER_BYTES}")


def test_too_many_tensors_or_absurd_shapes_are_refused_from_the_header(tmp_path):
    entry = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
    many = _safetensors(tmp_path / "many.safetensors",
                        _our_header(**{f"t{i}": entry for i in range(weights_module.MAX_TENSORS + 1)}), b"\0" * 4)
    _refused_quickly(many, f"limit {weights_module.MAX_TENSORS}")
    huge = {"dtype": "F32", "shape": [100_000, 100_000], "data_offsets": [0, 4]}
    _refused_quickly(_safetensors(tmp_path / "huge.safetensors", _our_header(w=huge), b"\0" * 4), "values (limit")
    odd = {"dtype": "F32", "shape": [-1, "x"], "data_offsets": [0, 4]}
    _refused_quickly(_safetensors(tmp_path / "odd.safetensors", _our_header(w=odd), b"\0" * 4), "has shape")


@pytest.mark.parametrize(("key", "value", "limit"), [
    ("stage_widths", [48, 48, 96, 144, 10**6], "[1, 2560]"),
    ("stage_depths", [1, 2, 4, 10**5, 1], "[1, 32]"),
    ("stage_widths", [2560] * 5, "M parameters"),
    ("context_width", 10**7, "[1, 1024]"),
    ("aspp_rates", list(range(1, 20)), "1 to 8"),
    ("num_classes", True, "[1, 64]"),
])
def test_a_config_asking_for_an_absurd_network_is_refused_before_it_is_built(tmp_path, key, value, limit):
    config = json.loads(ALNetConfig().to_json()) | {key: value}
    path = _safetensors(tmp_path / "absurd.safetensors", _our_header(config=config))
    _refused_quickly(path, "unreadable metadata", limit)


def test_an_overlong_config_is_refused_by_its_length(tmp_path):
    config = json.loads(ALNetConfig().to_json()) | {"decoder": "x" * 10_000}
    _refused_quickly(_safetensors(tmp_path / "long.safetensors", _our_header(config=config)), "limit 4096")


small = st.integers(1, 24)


@settings(max_examples=12, deadline=None)
@given(widths=st.lists(small, min_size=5, max_size=5), depths=st.lists(st.integers(1, 3), min_size=5, max_size=5),
       context=st.sampled_from(["lraspp", "aspp", "none"]), decoder=st.sampled_from(["asymmetric", "unet"]),
       context_width=small, decoder_width=small, unet=st.lists(small, min_size=5, max_size=5))
def test_the_parameter_estimate_bounds_the_real_network(widths, depths, context, decoder, context_width,
                                                        decoder_width, unet):
    """The limit is on an estimate; it is an upper bound of what ALNet really builds, so no accepted config builds
    a network larger than ``MAX_PARAMETERS``."""
    config = ALNetConfig(stage_widths=tuple(widths), stage_depths=tuple(depths), context=context, decoder=decoder,
                         context_width=context_width, decoder_width=decoder_width, unet_widths=tuple(unet))
    real = sum(p.numel() for p in ALNet(config).parameters())
    assert real <= config.parameters()


@settings(max_examples=25, deadline=None)
@given(key=st.sampled_from(["num_classes", "context_width", "decoder_width"]),
       value=st.one_of(st.integers(-10**9, 0), st.integers(LIMITS["decoder_width"] * 2 + 1025, 10**12),
                       st.floats(allow_nan=True), st.text(max_size=5), st.none()))
def test_any_scalar_outside_its_range_is_refused_naming_it(key, value):
    with pytest.raises(ValueError, match=key):
        ALNetConfig(**{key: value})


def test_the_shipped_architectures_lie_within_the_limits():
    for config in (ALNetConfig(), ALNetConfig(in_channels=3, context="aspp", decoder="unet"),
                   ALNetConfig(stage_widths=(64, 64, 128, 256, 1280))):  # RepVGG-A1's own widths
        assert config.parameters() <= MAX_PARAMETERS
