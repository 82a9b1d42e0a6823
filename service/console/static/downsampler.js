// An AudioWorklet processor: the microphone at the context's rate in, mono 16-bit PCM at the
// rate given in processorOptions out, posted to the page in small blocks. Each output sample is
// the mean of the input samples it spans: a crude low-pass, enough for speech into a 16 kHz model.
class Downsampler extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.step = sampleRate / options.processorOptions.rate;
    this.phase = 0;
    this.sum = 0;
    this.count = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || !channels.length) return true;
    const frames = channels[0].length;
    const out = new Int16Array(Math.ceil(frames / this.step) + 1);
    let written = 0;
    for (let i = 0; i < frames; i++) {
      let x = 0;
      for (const channel of channels) x += channel[i];
      this.sum += x / channels.length;
      this.count += 1;
      this.phase += 1;
      if (this.phase >= this.step) {
        this.phase -= this.step;
        const mean = Math.max(-1, Math.min(1, this.sum / this.count));
        out[written++] = Math.round(mean * 32767);
        this.sum = 0;
        this.count = 0;
      }
    }
    if (written) {
      const block = out.slice(0, written);
      this.port.postMessage(block, [block.buffer]);
    }
    return true;
  }
}

registerProcessor("downsampler", Downsampler);
