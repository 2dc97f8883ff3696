"""Minimal VRT documents: how the files of a dataset become one raster (sources.members), tiles
one mosaic and mosaics one stack (mosaics), without ever holding a whole raster in memory (GDAL
reads the VRT's sources block by block)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

from affine import Affine
from rasterio.crs import CRS

GDAL_TYPE_NAMES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "uint64": "UInt64",
    "int64": "Int64",
    "float32": "Float32",
    "float64": "Float64",
}


@dataclass(frozen=True)
class Source:
    path: str
    band: int
    col_off: int  # where the source goes on the VRT's grid
    row_off: int
    width: int
    height: int
    dtype: str
    nodata: float | None = None  # set: pixels equal to it are not copied (ComplexSource)
    block: tuple[int, int] = (256, 256)  # (rows, cols) of the source's blocks


@dataclass
class Band:
    dtype: str
    nodata: float | None
    description: str = ""
    sources: list[Source] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    # Files holding this band's overview levels, finest first (band ``overview_band`` of each).
    overviews: list[str] = field(default_factory=list)
    overview_band: int = 1


def _number(value: float) -> str:
    return "nan" if math.isnan(value) else repr(float(value))


def _source_xml(s: Source) -> str:
    kind = "ComplexSource" if s.nodata is not None else "SimpleSource"
    # A relative path is the VRT's own folder's (a VRT kept among the results moves with them).
    relative = int(not s.path.startswith("/"))
    lines = [
        f"    <{kind}>",
        f'      <SourceFilename relativeToVRT="{relative}">{escape(s.path)}</SourceFilename>',
        f"      <SourceBand>{s.band}</SourceBand>",
        # Declaring the source's size and type spares GDAL from opening every tile up front.
        f'      <SourceProperties RasterXSize="{s.width}" RasterYSize="{s.height}" '
        f'DataType="{GDAL_TYPE_NAMES[s.dtype]}" BlockXSize="{s.block[1]}" BlockYSize="{s.block[0]}"/>',
        f'      <SrcRect xOff="0" yOff="0" xSize="{s.width}" ySize="{s.height}"/>',
        f'      <DstRect xOff="{s.col_off}" yOff="{s.row_off}" xSize="{s.width}" ySize="{s.height}"/>',
    ]
    if s.nodata is not None:
        lines.append(f"      <NODATA>{_number(s.nodata)}</NODATA>")
    lines.append(f"    </{kind}>")
    return "\n".join(lines)


def vrt_xml(width: int, height: int, crs: CRS, transform: Affine, bands: list[Band]) -> str:
    gt = ", ".join(repr(float(v)) for v in transform.to_gdal())
    parts = [
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
        f'  <SRS dataAxisToSRSAxisMapping="1,2">{escape(crs.to_wkt())}</SRS>',
        f"  <GeoTransform>{gt}</GeoTransform>",
    ]
    for i, band in enumerate(bands, 1):
        parts.append(f'  <VRTRasterBand dataType="{GDAL_TYPE_NAMES[band.dtype]}" band="{i}">')
        if band.description:
            parts.append(f"    <Description>{escape(band.description)}</Description>")
        if band.nodata is not None:
            parts.append(f"    <NoDataValue>{_number(band.nodata)}</NoDataValue>")
        if band.metadata:
            parts.append("    <Metadata>")
            parts.extend(f"      <MDI key={quoteattr(k)}>{escape(v)}</MDI>" for k, v in band.metadata.items())
            parts.append("    </Metadata>")
        parts.extend(_source_xml(s) for s in band.sources)
        for path in band.overviews:
            parts.append(f'    <Overview><SourceFilename relativeToVRT="0">{escape(path)}</SourceFilename>'
                         f"<SourceBand>{band.overview_band}</SourceBand></Overview>")
        parts.append("  </VRTRasterBand>")
    parts.append("</VRTDataset>")
    return "\n".join(parts) + "\n"
