"""Pictures of results, written as PNG files without a display.

* :mod:`dmlrs.visualize.gallery` -- retrieval galleries: one row per query, the query then its
  top-k results with green/red borders for correct/incorrect and a caption under each.
* :mod:`dmlrs.visualize.figures` -- matplotlib figures on the Agg canvas (no pyplot).

    from dmlrs.visualize import GalleryItem, GalleryRow, save_gallery
    save_gallery([GalleryRow(GalleryItem("q.png", "forest"),
                             [GalleryItem("a.png", "#1 forest\\n0.93", correct=True)])], "gallery.png")
"""
from dmlrs.visualize.gallery import GalleryItem, GalleryLayout, GalleryRow, save_gallery

__all__ = ["GalleryItem", "GalleryLayout", "GalleryRow", "save_gallery"]
