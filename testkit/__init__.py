"""Helpers shared by the tests and the benchmarks: synthetic images (:mod:`testkit.drawing`), the real
server in a subprocess (:mod:`testkit.serving`) and the pytest markers a test must carry
(:mod:`testkit.markers`)."""
