"""The storage question: image codecs, equal-quality rates and the rate-distortion report.

``codecs`` wraps Pillow's JPEG, WebP, AVIF and JPEG 2000 and the pillow-jxl-plugin's JPEG XL;
``bdrate`` finds the rate a codec needs for a given quality; ``report`` merges the ``rd.csv``
files of ``python -m vaes4rs.rd`` jobs into one table, figure and BD-rate list. None of them
imports torch: they work on pixels and result files.
"""
