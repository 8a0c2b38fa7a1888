// Socket colours per type. Links take the colour of their type; unknown types get a stable hue.

const COLORS = {
  MODEL: "#B39DDB",
  CLIP: "#FFD500",
  VAE: "#FF6E6E",
  CONDITIONING: "#FFA931",
  LATENT: "#FF9CF9",
  IMAGE: "#64B5F6",
  MASK: "#81C784",
  SIGMAS: "#CDFFCD",
  SAMPLER: "#ECB4B4",
  NOISE: "#B0B0B0",
  GUIDER: "#66FFFF",
  UPSCALE_MODEL: "#C2FFAE",
  INT: "#29699C",
  FLOAT: "#AAEE88",
  STRING: "#77FF77",
  BOOLEAN: "#E7A0A0",
  COMBO: "#A0A0E7",
};

/** Colour for a socket type; a union "A,B" takes its first member's, "*" none. */
export function typeColor(type) {
  if (!type || type === "*") return null;
  const first = String(type).split(",")[0];
  if (COLORS[first]) return COLORS[first];
  let hash = 0;
  for (const ch of first) hash = (hash * 31 + ch.charCodeAt(0)) >>> 0;
  return `hsl(${hash % 360}, 60%, 65%)`;
}

/** Server-provided colours (from /api/schema or a plugin) override ours. */
export function setTypeColors(colors) {
  Object.assign(COLORS, colors);
}

export function knownTypeColors() {
  return { ...COLORS };
}
