"""Data layer: image IO (:mod:`data.io`), datasets (:mod:`data.datasets`), a synthetic labelled road-scene
generator (:mod:`data.synthetic`) and a dataset checker (:mod:`data.check`)."""
