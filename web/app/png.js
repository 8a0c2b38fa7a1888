// Read the text chunks of a PNG (tEXt, and uncompressed iTXt) to find an embedded workflow/prompt.

const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];

/** Return {keyword: text} for a PNG's tEXt and uncompressed iTXt chunks; throws if not a PNG. */
export function readPngText(buffer) {
  const bytes = new Uint8Array(buffer);
  if (!SIGNATURE.every((b, i) => bytes[i] === b)) throw new Error("not a PNG file");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const latin1 = new TextDecoder("latin1");
  const utf8 = new TextDecoder("utf-8");
  const out = {};
  let offset = 8;
  while (offset + 8 <= bytes.length) {
    const length = view.getUint32(offset);
    const type = latin1.decode(bytes.subarray(offset + 4, offset + 8));
    const data = bytes.subarray(offset + 8, offset + 8 + length);
    if (type === "tEXt") {
      const sep = data.indexOf(0);
      if (sep > 0) out[latin1.decode(data.subarray(0, sep))] = utf8.decode(data.subarray(sep + 1));
    } else if (type === "iTXt") {
      // keyword \0 compression-flag compression-method language \0 translated \0 text
      const sep = data.indexOf(0);
      const compressed = data[sep + 1] === 1;
      const langEnd = data.indexOf(0, sep + 3);
      const transEnd = data.indexOf(0, langEnd + 1);
      if (sep > 0 && !compressed && transEnd > 0) {
        out[latin1.decode(data.subarray(0, sep))] = utf8.decode(data.subarray(transEnd + 1));
      }
    } else if (type === "IEND") {
      break;
    }
    offset += 12 + length;
  }
  return out;
}

/** The parsed `workflow` and `prompt` of a PNG saved by SaveImage (each null when absent). */
export function readPngWorkflow(buffer) {
  const text = readPngText(buffer);
  const parse = (s) => {
    if (!s) return null;
    try {
      return JSON.parse(s);
    } catch {
      return null;
    }
  };
  return { workflow: parse(text.workflow), prompt: parse(text.prompt) };
}
