"""How decisions move with a probe's speech duration: unknown voices' and genuine scores of whole
clips and of their first 0.7-5 s of speech, the duration term's fit (half 0 of eval-speech) and its
report (half 1, real telephone calls), and the enrollment-side comparison (best sample beside the
centroid).

Usage: python -m scripts.duration_study   (first run embeds the crops: ~15 min on 2 CPU cores)
"""

from devtools.quality import main

if __name__ == "__main__":
    raise SystemExit(main())
