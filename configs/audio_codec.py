"""Audio codec quickstart: a small SoundStream-style codec on the built-in speech.

  vqlab codec --config configs/audio_codec.py --workdir runs/codec

1,200 steps, about 24 minutes on 2 CPU cores. 16 kHz, strides 2 4 5 8 (hop 320: 50
frames/s), causal SEANet encoder with ELU and weight norm, residual VQ of 8 levels x
1,024 codes (EMA codebooks, k-means init, dead-code restarts, quantizer dropout): 0.5 to
4 kbps from one model. Trained on espeak-ng speech, evaluated on real recordings
(vqlab_speech's test split). Two deviations from SoundStream, both for a codec whose
levels count within a CPU budget (README "Audio codec quickstart"): the decoder predicts
a spectrogram and inverts it (Vocos; `shape.decoder="seanet"` for SoundStream's), and the
first 200 steps train on the waveform's squared error (`loss.mse_warmup_steps`; 0 for
SoundStream's losses from the start). Variants:
- `:encodec`: EnCodec's 24 kHz model (strides 2 4 5 8 -> 75 frames/s, 2-layer LSTM,
  32 base channels, 32 levels of 1,024 codes, discriminators from the start; SEANet
  decoder, no warm-up).
- `:dac`: DAC-style factorized codes (8-dim l2-normalised lookups), Snake activations, and
  DAC's quantizer dropout on half of the examples (SEANet decoder, no warm-up).
- `:semantic`: the first level distilled to carry what is said (SpeechTokenizer / Mimi):
  CTC of a linear phoneme head on level 1 against espeak-ng's phonemes of each crop,
  weight `loss.phoneme_ctc` (1.0: one choice, not tuned).
- `:hubert`: the same with SpeechTokenizer's teacher, a HuBERT's features (the mean of
  its layers) matched by a linear map of level 1 (their D-axis loss, weight 40 = their
  120 : 45 to the mel loss); give `--config.teacher.weights=hubert_base.npz` (`vqlab
  convert hubert` of facebook/hubert-base-ls960; nothing is downloaded).
- `:rooms`: each training crop heard, with probability 0.5 each, through a simulated room
  and coloured noise (`data.augment`; README "Audio codec quickstart": better on the real
  recordings, worse on held-out synthetic speech).
Add `,runlocal` for a 2-step smoke run with every loss term on.
"""

import ml_collections

from configs.common import parse_arg, quantizer_spec
from vqlab import parallel

SHAPE = dict(channels=8, latent_dim=64, strides=(2, 4, 5, 8), dilations=(1, 3, 9),
             residual_kernel=7, kernel=7, activation="elu", causal=True, weight_norm=True,
             lstm_layers=0, audio_channels=1, decoder="istft",
             remat="none")  # "block" / "full": residual units recomputed in the backward


def get_config(arg: str | None = None):
  args = parse_arg(arg, known=("encodec", "dac", "semantic", "hubert", "rooms"))
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dry_run = False  # compile the step for the mesh, print memory and FLOPs, train nothing
  c.profile_steps = ()  # (first, last): a jax.profiler trace of those steps (TensorBoard)
  c.model = ml_collections.ConfigDict(dict(shape=dict(SHAPE)))
  # quantizer_dropout: the share of examples that draw their depth (SoundStream 1.0, DAC 0.5)
  c.model.quantizer = quantizer_spec("rvq", codebook_size=1024, num_levels=8,
                                     quantizer_dropout=1.0, codebook="ema", kmeans_init=True,
                                     dead_code_threshold=0.1, beta=1.0)
  c.data = ml_collections.ConfigDict(dict(
      name="vqlab_speech", data_dir="~/tensorflow_datasets", train_split="train",
      eval_split="test", key="audio",  # the waveform field ("speech" in tfds' librispeech)
      source_rate=0,  # for sources without a sample_rate field (librispeech: 16000)
      sample_rate=16000, crop_seconds=0.5, eval_seconds=2.0,
      normalize=True, target_dbfs=-20.0,  # RMS loudness normalisation per utterance
      in_memory=True, threads=2, prefetch=64, workers=0))
  # training crops through simulated rooms and noise (pipeline.Acoustics; off: 0.0 each)
  c.data.augment = ml_collections.ConfigDict(dict(
      reverb_prob=0.0, rt60=(0.1, 0.6), drr_db=(0.0, 15.0),
      noise_prob=0.0, snr_db=(10.0, 40.0), noise_exponent=(0.0, 2.0)))
  c.train = ml_collections.ConfigDict(dict(
      steps=1200, batch_size=16, lr=2e-3, disc_lr=1e-4, b1=0.8, b2=0.99, weight_decay=0.0,
      warmup_steps=50, schedule="cosine", grad_clip=10.0, nonfinite="stop", max_skips=20,
      compute_dtype="float32",  # or "bfloat16": float32 parameters, bf16 convs
      grad_accum_steps=1))  # micro-batches per step (a divisor of batch_size; codec.train_step)
  # DAC's weights (mel 15, adversarial 1, feature matching 2); wave L1 as EnCodec's 0.1
  c.loss = ml_collections.ConfigDict(dict(
      wave_l1=0.1, mel=15.0, stft=0.0, quantizer=1.0, adversarial=1.0, feature=2.0,
      disc_start=1150,  # the discriminators cost ~4x a step on CPU: the last 50 steps
      mse_warmup_steps=200,  # first steps on the waveform's squared error (codec.train_step)
      phoneme_ctc=0.0,  # > 0: distil espeak-ng's phonemes into level 1 (`:semantic`)
      feature_distill=0.0))  # > 0: distil a HuBERT teacher's features into level 1 (`:hubert`)
  # the teacher of feature_distill: a converted HuBERT (`vqlab convert hubert`), its layer
  # (or "avg" of all, SpeechTokenizer's), SpeechTokenizer's "time" (D-axis) or "frame"
  # (T-axis) loss, the input normalised per utterance (the large models expect it), and
  # its feature width (0: read from the weights)
  c.teacher = ml_collections.ConfigDict(dict(weights="", layer="avg", axis="time",
                                             normalize=False, dim=0))
  c.disc = ml_collections.ConfigDict(dict(
      periods=(2, 3, 5, 7, 11), stft_resolutions=((1024, 256), (2048, 512), (512, 128)),
      width=16, max_width=128))  # HiFi-GAN's period discriminators widen to 1024
  # WER of PocketSphinx's transcripts of up to this many whole held-out utterances that
  # have a transcript, at every number of levels (0: none; needs `pip install pocketsphinx`)
  # and a phoneme probe on each level's tokens, fitted on this many espeak-ng training
  # utterances for probe_steps Adam steps, scored on synth_test (0: none)
  # (probe_held_out of them; 0: all 48)
  c.eval = ml_collections.ConfigDict(dict(wer_utterances=64, probe_utterances=200,
                                          probe_steps=400, probe_held_out=0))
  c.mesh = ml_collections.ConfigDict(dict(
      data=-1, fsdp=1, tensor=1, min_fsdp_size=2**12, rules=parallel.DEFAULT_RULES))
  c.log = ml_collections.ConfigDict(dict(
      every=25, audio_every=500, audio_examples=4, checkpoint_every=500, keep_checkpoints=3,
      eval_examples=64,
      ladder_every=300))  # quality at every number of levels on the eval clips (0: off)
  if "encodec" in args:
    c.model.shape.update(channels=32, latent_dim=128, lstm_layers=2, residual_kernel=3,
                         dilations=(1,), decoder="seanet")
    c.model.quantizer.args.update(num_levels=32)
    c.data.update(sample_rate=24000, crop_seconds=1.0)
    c.train.update(steps=300_000, batch_size=64, lr=3e-4, disc_lr=3e-4, b1=0.5, b2=0.9,
                   schedule="constant", warmup_steps=0)
    c.loss.update(wave_l1=0.1, mel=1.0, stft=0.0, adversarial=3.0, feature=3.0, disc_start=0,
                  mse_warmup_steps=0)
    c.disc.update(width=32, max_width=1024)
    c.log.ladder_every = 10_000
  if "dac" in args:
    c.model.shape.update(activation="snake", decoder="seanet")
    c.loss.mse_warmup_steps = 0
    c.model.quantizer.args.update(code_dim=8, metric="cosine", codebook="learned",
                                  kmeans_init=False, dead_code_threshold=0.0, beta=0.25,
                                  quantizer_dropout=0.5)
  if "semantic" in args:
    c.loss.phoneme_ctc = 1.0
  if "hubert" in args:  # SpeechTokenizer's distillation-to-mel weight ratio, 120 : 45
    c.loss.feature_distill = c.loss.mel * 120 / 45
  if "rooms" in args:
    c.data.augment.update(reverb_prob=0.5, noise_prob=0.5)
  if "runlocal" in args:
    c.model.shape.update(channels=4, latent_dim=16, strides=(2, 4), dilations=(1, 3),
                         lstm_layers=min(c.model.shape.lstm_layers, 1))
    c.model.quantizer.args.update(codebook_size=64, num_levels=3)
    c.data.update(crop_seconds=0.2, eval_seconds=0.2)
    c.train.update(steps=2, batch_size=8, warmup_steps=1)
    c.loss.update(disc_start=1, stft=1.0, mse_warmup_steps=1)  # step 1 warm-up, step 2 GAN
    c.disc.update(width=4, stft_resolutions=((512, 128),))
    c.log.update(every=1, audio_every=2, checkpoint_every=2, eval_examples=8, ladder_every=1)
    c.eval.update(wer_utterances=1, probe_utterances=4, probe_steps=5, probe_held_out=8)
  return c
