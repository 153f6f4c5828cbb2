"""Quantizer dropout on the audio codec (SoundStream, Zeghidour et al. 2021, arXiv
2107.03312, Sec. 3.3 and Fig. 5): the quickstart codec (configs/audio_codec.py: iSTFT
decoder, 200 waveform warm-up steps) with one 8-level residual VQ trained with quantizer
dropout and decoded with 1, 2, 4 and 8 levels, against codecs trained without dropout at
fixed depths of 1 and 8 levels; 600 steps each, no discriminators (the 600-step row of
README "Audio codec quickstart"), scored on the 64 real-recording clips; three seeds.
The digits-autoencoder version of the same claims is residual_depth.py.

  vqlab sweep --config configs/ablations/codec_dropout.py --workdir runs/ablations/codec_dropout

About 6 minutes a run on 2 CPU cores (9 runs). `:runlocal`: the 2-step codec, 1 and 2
levels, one seed (a smoke run: its verdicts say nothing).
"""

from configs.common import parse_arg, sweep_config, variant

METRICS = ("mel_distance", "stoi", "si_sdr")


def get_config(arg=None):
  args = parse_arg(arg)
  depths, base, seeds = [1, 2, 4, 8], "configs/audio_codec.py", (0, 1, 2)
  fixed_depths = [1, 8]  # 2 and 4 would be 6 more runs (~36 min): the dropout model has them
  steps = 600
  if "runlocal" in args:
    depths, fixed_depths, base, seeds, steps = [1, 2], [1, 2], base + ":runlocal", (0,), 2
  rvq = "model.quantizer.args."
  runs = [variant({"method": "fixed", "levels": n},
                  {rvq + "num_levels": n, rvq + "quantizer_dropout": 0.0}) for n in fixed_depths]
  runs.append(variant({"method": "dropout"}, {rvq + "num_levels": max(depths),
                                              rvq + "quantizer_dropout": 1.0}, name="dropout"))
  at = {m: m + "@{levels}" for m in METRICS}  # the summary's score at that many levels
  return sweep_config(
      "Quantizer dropout on the audio codec: one 8-level RVQ codec trained with dropout vs "
      "codecs trained at fixed depths (600 steps, real-recording clips)", base, runs, METRICS,
      seeds=seeds, claims="codec_dropout.claims.toml",
      overrides={"train.steps": steps, "loss.disc_start": steps, "eval.wer_utterances": 0,
                 "eval.probe_utterances": 0, "log.ladder_every": 0},
      # every run is read at its levels; the dropout model at each of `depths`
      expand=[*(dict(where={"method": "fixed", "levels": n}, axes={"levels": [n]}, metrics=at)
                for n in fixed_depths),
              dict(where={"method": "dropout"}, axes={"levels": depths}, metrics=at)],
      plots=[dict(x="levels", metric=m, line="method", log2_x=True) for m in METRICS],
      labels={"mel_distance": "mel distance", "stoi": "STOI", "si_sdr": "SI-SDR (dB)"})
