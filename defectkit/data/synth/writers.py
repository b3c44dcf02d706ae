"""Per-format writers. Everything byte-deterministic: sorted JSON keys, no timestamps,
fixed encoder settings."""
from __future__ import annotations

import io
import json
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image

IMAGE_EXT = "jpg"
JPEG_QUALITY = 95          # 4:4:4 chroma keeps thin coloured defects; ~4 ms for 512x512
PNG_LEVEL = 1              # zlib level for image PNGs (mvtec/, severity/): fast, still lossless


def encode_image(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False)
    return buf.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def save_png(path: Path, arr: np.ndarray, level: int = PNG_LEVEL) -> None:
    Image.fromarray(arr).save(path, "PNG", compress_level=level)


def write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def dump_json(obj, path: Path, indent: int | None = None) -> None:
    sep = (",", ": ") if indent else (",", ":")
    text = json.dumps(obj, sort_keys=True, indent=indent, separators=sep, ensure_ascii=False)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text + "\n")


# ---------------------------------------------------------------------------- LabelMe
def labelme(file_name: str, width: int, height: int, defects: list[dict]) -> dict:
    shapes = [{"label": d["name"], "points": [[x, y] for x, y in d["points"]],
               "group_id": None, "shape_type": "polygon", "flags": {}} for d in defects]
    return {"version": "4.5.6", "flags": {}, "shapes": shapes,
            "imagePath": f"../images/{file_name}", "imageData": None,
            "imageHeight": height, "imageWidth": width}


# ---------------------------------------------------------------------------- Pascal VOC
def voc_xml(file_name: str, width: int, height: int, defects: list[dict]) -> str:
    """LabelImg element order (positional readers index object[4] = bndbox).
    Box numbers equal the COCO box: xmin=x, ymin=y, xmax=x+w, ymax=y+h."""
    lines = ["<annotation>",
             "\t<folder>images</folder>",
             f"\t<filename>{escape(file_name)}</filename>",
             f"\t<path>../../images/{escape(file_name)}</path>",
             "\t<source>", "\t\t<database>defectkit-synth</database>", "\t</source>",
             "\t<size>", f"\t\t<width>{width}</width>", f"\t\t<height>{height}</height>",
             "\t\t<depth>3</depth>", "\t</size>",
             "\t<segmented>0</segmented>"]
    for d in defects:
        x0, y0, x1, y1 = d["box"]
        lines += ["\t<object>", f"\t\t<name>{escape(d['name'])}</name>",
                  "\t\t<pose>Unspecified</pose>", "\t\t<truncated>0</truncated>",
                  "\t\t<difficult>0</difficult>", "\t\t<bndbox>",
                  f"\t\t\t<xmin>{x0}</xmin>", f"\t\t\t<ymin>{y0}</ymin>",
                  f"\t\t\t<xmax>{x1}</xmax>", f"\t\t\t<ymax>{y1}</ymax>",
                  "\t\t</bndbox>", f"\t\t<severity>{d['severity']}</severity>", "\t</object>"]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- COCO
def coco(records: list[dict], classes: list[str], split: str) -> dict:
    images, anns = [], []
    ann_id = 0
    for r in records:                     # records are in image-id order
        if r["split"] != split:
            continue
        images.append({"id": r["id"], "file_name": r["file_name"],
                       "width": r["width"], "height": r["height"]})
        for d in r["defects"]:
            ann_id += 1
            x0, y0, x1, y1 = d["box"]
            # the LabelMe points; pycocotools rasterises them within ~1 px of masks/
            # (measured mean IoU 0.84, lower for 1-px lines); masks/ holds the exact masks.
            seg = [v for xy in d["points"] for v in xy]
            anns.append({"id": ann_id, "image_id": r["id"], "category_id": d["category_id"],
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": d["area"], "iscrowd": 0,
                         "segmentation": [seg], "severity": d["severity"]})
    # annotation ids are unique per file; the image ids are global (same id in both files)
    return {"info": {"description": "defectkit synthetic dataset", "version": "1.0"},
            "licenses": [],
            "images": images, "annotations": anns,
            "categories": [{"id": i + 1, "name": c, "supercategory": "defect"}
                           for i, c in enumerate(classes)]}


def crop_box(box, width: int, height: int, margin_frac: float = 0.25, min_margin: int = 6):
    """Severity crop: the defect box grown by a context margin, clipped to the image."""
    x0, y0, x1, y1 = box
    m = max(min_margin, int(round(margin_frac * max(x1 - x0, y1 - y0))))
    return max(x0 - m, 0), max(y0 - m, 0), min(x1 + m, width), min(y1 + m, height)
