"""Who speaks when: speaker turns found from the audio alone (windows, clustering, boundaries)."""
