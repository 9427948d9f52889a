"""What is wrong with a file that should hold tensors but cannot be read: empty, cut short, or of
another format than its name says (a torch.save zip archive, or safetensors: a header length, a JSON
header and the tensors' bytes)."""
import io
import json
import zipfile


def describe_unreadable(data: bytes, expected: str = "torch") -> str:
    """What is wrong with the bytes of a file that should be a torch.save file (``expected="torch"``)
    or a safetensors file (``"safetensors"``).

    Examples:
        >>> describe_unreadable(b"")
        'is empty (0 bytes)'
    """
    if not data:
        return "is empty (0 bytes)"
    if data[:4] == b"PK\x03\x04":  # a zip archive: what torch.save writes
        if not zipfile.is_zipfile(io.BytesIO(data)):
            return f"is a torch.save file cut short (truncated: {len(data)} bytes, its end is missing)"
        if expected == "safetensors":
            return "is a torch.save file, not safetensors (name it .pth)"
        return "is a torch.save file that torch cannot read (damaged, or from a newer torch)"
    size = _safetensors_size(data)
    if size is not None:
        if len(data) < size:
            return f"is a safetensors file cut short (truncated: {len(data)} of its {size} bytes)"
        if expected == "torch":
            return "is a safetensors file, not a torch.save file (name it .safetensors)"
        return "is a safetensors file that cannot be read (damaged)"
    if data[:1] == b"\x80":
        return "is a plain pickle, not a torch.save or safetensors file"
    return f"is not a torch.save or safetensors file (it starts with {data[:12]!r})"


def _safetensors_size(data: bytes) -> int | None:
    """The size a safetensors file declares (8 bytes of header length, a JSON header, the tensors), or
    None when ``data`` does not start like one."""
    header = int.from_bytes(data[:8], "little") if len(data) >= 8 else 0
    if data[8:9] != b"{" or not 0 < header < 100_000_000:
        return None
    try:
        entries = json.loads(data[8 : 8 + header])
    except (ValueError, UnicodeDecodeError):
        return 8 + header if len(data) < 8 + header else None
    ends = [entry["data_offsets"][1] for entry in entries.values()
            if isinstance(entry, dict) and "data_offsets" in entry]
    return 8 + header + max(ends, default=0)
