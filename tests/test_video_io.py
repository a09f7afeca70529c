import numpy as np

from fundus2video.video_io import read_video, write_all, write_png


def test_mp4_roundtrip_with_decord_and_gif(tmp_path):
    frames = np.zeros((5, 30, 45, 3), np.uint8)  # odd width: padded to even for H.264
    for t in range(5):
        frames[t, :, :, :] = 40 * t
    mp4, gif = write_all(tmp_path / "clip", frames, fps=4)
    back = read_video(mp4)
    assert back.shape == (5, 30, 46, 3)
    assert np.abs(back[:, :, :45].astype(int).mean(axis=(1, 2, 3)) - 40 * np.arange(5)).max() < 3
    assert gif.stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.gif", "clip.mp4"]  # no temp files


def test_write_png(tmp_path):
    import cv2

    img = np.zeros((8, 8, 3), np.uint8)
    img[..., 0] = 255  # red in RGB
    write_png(tmp_path / "a.png", img)
    assert cv2.imread(str(tmp_path / "a.png"))[0, 0].tolist() == [0, 0, 255]  # BGR on disk
