"""Run as a script (standard library only): speak one utterance with libespeak-ng and write
its phoneme events and samples to stdout. Usage: python -S espeak_events.py TEXT VOICE WPM
PITCH. Output: one line per phoneme "<symbol> <start sample>", a line "samples <rate> <n>",
then n little-endian int16 samples.

A fresh process per utterance because the library keeps state between utterances (the
voice variants' random jitter): in a fresh process its samples are the `espeak-ng
--stdout` command's, bit for bit (tests/data/test_speech.py), and the events say where
each phoneme starts in them."""

import ctypes
import ctypes.util
import sys

_PHONEME_EVENTS = 0x0001  # espeakINITIALIZE_PHONEME_EVENTS
_DONT_EXIT = 0x8000  # espeakINITIALIZE_DONT_EXIT: errors come back as return codes
_SYNCHRONOUS = 2  # AUDIO_OUTPUT_SYNCHRONOUS: samples arrive through the callback
_RATE, _PITCH = 1, 3  # espeak_PARAMETER
_CHARACTER_POSITIONS, _END_PAUSE = 1, 0x1000
_EVENT_END, _EVENT_PHONEME = 0, 7


class _EventId(ctypes.Union):
  _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):  # espeak_EVENT of speak_lib.h
  _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
              ("text_position", ctypes.c_int), ("length", ctypes.c_int),
              ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
              ("user_data", ctypes.c_void_p), ("id", _EventId)]


class _Voice(ctypes.Structure):  # espeak_VOICE of speak_lib.h
  _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_char_p),
              ("identifier", ctypes.c_char_p), ("gender", ctypes.c_ubyte),
              ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte), ("xx1", ctypes.c_ubyte),
              ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(_Event))


def main(text: str, voice: str, wpm: int, pitch: int) -> None:
  name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
  lib = ctypes.CDLL(name)
  rate = lib.espeak_Initialize(_SYNCHRONOUS, 0, None, _PHONEME_EVENTS | _DONT_EXIT)
  if rate <= 0:
    raise SystemExit(f"espeak-ng: espeak_Initialize failed ({rate})")
  chunks, events = [], []

  def collect(samples, count, event):
    if samples and count > 0:
      chunks.append(ctypes.string_at(samples, 2 * count))
    i = 0
    while event[i].type != _EVENT_END:
      if event[i].type == _EVENT_PHONEME:
        events.append((event[i].id.string.decode("ascii", "replace"), event[i].sample))
      i += 1
    return 0

  callback = _CALLBACK(collect)
  lib.espeak_SetSynthCallback(callback)
  if lib.espeak_SetVoiceByName(voice.encode()) != 0:
    # as the espeak-ng command does: a name it does not know is taken as a language
    # ("en-gb+m7", a variant that is not there, speaks en-gb's default)
    select = _Voice(languages=voice.encode())
    if lib.espeak_SetVoiceByProperties(ctypes.byref(select)) != 0:
      raise SystemExit(f"espeak-ng: unknown voice {voice!r}")
  lib.espeak_SetParameter(_RATE, wpm, 0)
  lib.espeak_SetParameter(_PITCH, pitch, 0)
  data = text.encode()
  lib.espeak_Synth(data, len(data) + 1, 0, _CHARACTER_POSITIONS, 0, _END_PAUSE, None, None)
  lib.espeak_Synchronize()
  pcm = b"".join(chunks)
  out = sys.stdout.buffer
  out.write("".join(f"{s} {t}\n" for s, t in events).encode())
  out.write(f"samples {rate} {len(pcm) // 2}\n".encode())
  out.write(pcm if sys.byteorder == "little" else _swap(pcm))


def _swap(pcm: bytes) -> bytes:
  return bytes(b for i in range(0, len(pcm), 2) for b in (pcm[i + 1], pcm[i]))


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
