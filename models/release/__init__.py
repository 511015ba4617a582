"""Compatibility with the authors' public release (docs/RELEASE.md): its own segmenter network (``segmenter``) and the
converter of its checkpoint onto our modules (``convert``). Only the release profile
(configs/official_release.yaml) and scripts/convert_release_checkpoint.py use this package."""
