// BlurHash decoder (https://blurha.sh, the reference algorithm), in plain JS: the page
// paints an image's placeholder before its thumbnail arrives, with nothing from elsewhere.
"use strict";

(function () {
  const CHARS =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~";

  function decode83(text) {
    let value = 0;
    for (const ch of text) {
      const digit = CHARS.indexOf(ch);
      if (digit < 0) throw new Error("not a BlurHash");
      value = value * 83 + digit;
    }
    return value;
  }

  function toLinear(value) {
    const v = value / 255;
    return v <= 0.04045 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
  }

  function toSRGB(value) {
    const v = Math.max(0, Math.min(1, value));
    return v <= 0.0031308
      ? Math.round(v * 12.92 * 255 + 0.5)
      : Math.round((1.055 * Math.pow(v, 1 / 2.4) - 0.055) * 255 + 0.5);
  }

  function signPow(value, exponent) {
    return Math.sign(value) * Math.pow(Math.abs(value), exponent);
  }

  // RGBA pixels (Uint8ClampedArray) of `width` x `height`.
  function decode(hash, width, height, punch = 1) {
    if (!hash || hash.length < 6) throw new Error("not a BlurHash");
    const sizeFlag = decode83(hash[0]);
    const numY = Math.floor(sizeFlag / 9) + 1;
    const numX = (sizeFlag % 9) + 1;
    if (hash.length !== 4 + 2 * numX * numY) throw new Error("not a BlurHash");
    const maxValue = ((decode83(hash[1]) + 1) / 166) * punch;
    const dc = decode83(hash.substring(2, 6));
    const colors = [[toLinear(dc >> 16), toLinear((dc >> 8) & 255), toLinear(dc & 255)]];
    for (let i = 1; i < numX * numY; i++) {
      const ac = decode83(hash.substring(4 + i * 2, 6 + i * 2));
      const r = Math.floor(ac / (19 * 19));
      const g = Math.floor(ac / 19) % 19;
      const b = ac % 19;
      colors.push([
        signPow((r - 9) / 9, 2) * maxValue,
        signPow((g - 9) / 9, 2) * maxValue,
        signPow((b - 9) / 9, 2) * maxValue,
      ]);
    }
    const pixels = new Uint8ClampedArray(width * height * 4);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        let r = 0, g = 0, b = 0;
        for (let j = 0; j < numY; j++) {
          const basisY = Math.cos((Math.PI * y * j) / height);
          for (let i = 0; i < numX; i++) {
            const basis = Math.cos((Math.PI * x * i) / width) * basisY;
            const color = colors[i + j * numX];
            r += color[0] * basis;
            g += color[1] * basis;
            b += color[2] * basis;
          }
        }
        const at = 4 * (x + y * width);
        pixels[at] = toSRGB(r);
        pixels[at + 1] = toSRGB(g);
        pixels[at + 2] = toSRGB(b);
        pixels[at + 3] = 255;
      }
    }
    return pixels;
  }

  // A data: URL of the placeholder, for a CSS background (null if the hash is unusable).
  function toDataURL(hash, width = 32, height = 32) {
    try {
      const canvas = document.createElement("canvas");
      canvas.width = width;
      canvas.height = height;
      const context = canvas.getContext("2d");
      const image = context.createImageData(width, height);
      image.data.set(decode(hash, width, height));
      context.putImageData(image, 0, 0);
      return canvas.toDataURL("image/png");
    } catch (error) {
      return null;
    }
  }

  window.BlurHash = { decode, toDataURL };
})();
