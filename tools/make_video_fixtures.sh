#!/usr/bin/env bash
# Makes the video fixtures of tests/fixtures/video/ from model_data/dog.jpg with ffmpeg
# (libx264 for H.264; the other codecs and containers only for the error tests), and the
# SHA-256 of every frame ffmpeg decodes from each H.264 clip, as yuv420p planes.
#
#   tools/make_video_fixtures.sh            # needs ffmpeg with libx264, libx265, aac
#
# Rerunning it rewrites the files; the frame hashes are what the decoder tests compare
# against, so they come from the clips just written (libx264 builds may differ, the
# hashes always match their clips).
set -euo pipefail
cd "$(dirname "$0")/.."
out=tests/fixtures/video
mkdir -p "$out"
src=model_data/dog.jpg
ff() { ffmpeg -hide_banner -loglevel error -y "$@"; }

# 16 frames at 15 fps, 320x240: a slow pan and zoom over the dog picture (768x576), so
# that frames differ and the detector has a dog, a bicycle and a car to find.
pan="scale=400:300,crop=320:240:x='4*n':y='2*n',format=yuv420p"
common=(-loop 1 -framerate 15 -i "$src" -frames:v 16 -vf "$pan" -map_metadata -1 -fflags +bitexact -flags:v +bitexact)

# x264's defaults (High profile, CABAC, 3 B-frames); x264 written into the SEI is dropped
# so that the file does not name a build.
ff "${common[@]}" -c:v libx264 -profile:v high -preset medium -crf 23 -x264-params no-info=1 "$out/clip_high.mp4"
# Baseline profile (CAVLC, no B-frames), with the moov box in front (+faststart).
ff "${common[@]}" -c:v libx264 -profile:v baseline -crf 23 -x264-params no-info=1 -movflags +faststart "$out/clip_baseline.mp4"

# The frames ffmpeg decodes: one line per frame, the SHA-256 of its yuv420p planes.
for clip in clip_high clip_baseline; do
    ff -i "$out/$clip.mp4" -f framehash -hash sha256 -pix_fmt yuv420p "$out/$clip.framehash"
done

# For the error tests: the same H.264 stream in Matroska, HEVC in MP4, and an MP4 with
# only an audio track.
ff -i "$out/clip_high.mp4" -c copy -fflags +bitexact "$out/clip.mkv"
ff -loop 1 -framerate 15 -i "$src" -frames:v 4 -vf "scale=160:120,format=yuv420p" -map_metadata -1 \
    -c:v libx265 -x265-params log-level=none "$out/clip_hevc.mp4"
ff -f lavfi -i "sine=frequency=440:duration=0.2" -c:a aac -map_metadata -1 -fflags +bitexact "$out/audio_only.mp4"
ls -l "$out"
