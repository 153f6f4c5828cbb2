"""Training speech heard through rooms and noise, for a codec evaluated on recordings: the
quickstart codec (configs/audio_codec.py) trained on espeak-ng's clean synthetic speech as
it is, and with each training crop heard, with probability 0.5 each, through a simulated
room (RT60 0.1-0.6 s) and coloured noise (SNR 10-40 dB) (`data.augment`,
vqlab/data/pipeline.Acoustics; training on simulated rooms as Ko et al. 2017, "A study
on data augmentation of reverberant speech for robust speech recognition", ICASSP); 600 steps
each, no discriminators, scored at 1 and 8 levels on the 64 real-recording clips (never
trained on); three seeds. The question is this repository's, not a paper's (README "Audio
codec quickstart": the codec stalls on the recordings while it improves on held-out
synthetic speech, which points at the training data); there is no claims file, the table's
95% intervals answer it. The ranges and probabilities are the config's, fixed before any
run, not tuned.

  vqlab sweep --config configs/ablations/codec_rooms.py --workdir runs/ablations/codec_rooms

About 6 minutes a run on 2 CPU cores (6 runs). `:runlocal`: the 2-step codec, one seed (a
smoke run: its numbers say nothing).
"""

from configs.common import parse_arg, sweep_config, variant

METRICS = ("mel_distance", "stoi", "si_sdr")


def get_config(arg=None):
  args = parse_arg(arg)
  base, seeds, steps, levels = "configs/audio_codec.py", (0, 1, 2), 600, [1, 8]
  if "runlocal" in args:
    base, seeds, steps, levels = base + ":runlocal", (0,), 2, [1, 3]
  runs = [variant({"training_speech": "clean"}, {}),
          variant({"training_speech": "rooms+noise"}, {"data.augment.reverb_prob": 0.5,
                                                       "data.augment.noise_prob": 0.5},
                  name="rooms_noise")]
  at = {m: m + "@{levels}" for m in METRICS}  # the summary's score at that many levels
  return sweep_config(
      "Rooms and noise in the codec's training speech, scored on real recordings (600 steps)",
      base, runs, METRICS, seeds=seeds,
      overrides={"train.steps": steps, "loss.disc_start": steps, "eval.wer_utterances": 0,
                 "eval.probe_utterances": 0, "log.ladder_every": 0},
      expand=[dict(where={}, axes={"levels": levels}, metrics=at)],
      plots=[dict(x="levels", metric=m, line="training_speech") for m in METRICS],
      labels={"mel_distance": "mel distance", "stoi": "STOI", "si_sdr": "SI-SDR (dB)"})
