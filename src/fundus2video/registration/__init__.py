"""Registration of FFA series and their colour photo: every frame and the CF onto the series' frame 0.

`estimate`: line (vessel) maps and the pyramid estimator on arrays; `folders`: case folders in, registered
case folders, registration.json and quality figures out (`fundus2video data register`); `figures`: the
overlays a person looks at. docs/REGISTRATION.md: what it does, how well, and its limits.
"""
