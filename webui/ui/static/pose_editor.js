() => {
  /*
   * The ControlNet tab's pose editor: draws the pose document in #controlnet_pose_json (the OpenPose JSON a
   * pose preprocessor detected, or one the user typed or loaded) as an SVG skeleton on black, as the map
   * looks, in #easel_pose_canvas, and lets the user drag any body, hand or face point. A drag
   * writes the moved point back into the JSON box (an "input" event, so the server sees it); "Render pose"
   * then draws the map from the JSON on the server. Coordinates keep the document's units: fractions of the
   * canvas, or pixels when the document uses pixels.
   */
  if (window.easelPose) return;

  const LIMBS = [
    [1, 2], [1, 5], [2, 3], [3, 4], [5, 6], [6, 7], [1, 8], [8, 9], [9, 10], [1, 11], [11, 12],
    [12, 13], [1, 0], [0, 14], [14, 16], [0, 15], [15, 17],
  ];
  const PARTS = ["pose_keypoints_2d", "hand_left_keypoints_2d", "hand_right_keypoints_2d", "face_keypoints_2d"];
  const SVG = "http://www.w3.org/2000/svg";
  const box = () => document.querySelector("#controlnet_pose_json textarea");
  const host = () => document.getElementById("easel_pose_canvas");

  function parse(text) {
    try {
      const doc = JSON.parse(text);
      return doc && Array.isArray(doc.people) && doc.canvas_width > 0 && doc.canvas_height > 0 ? doc : null;
    } catch (error) {
      return null;
    }
  }

  /** Whether the document's coordinates are pixels (any above 1) rather than fractions of the canvas. */
  function inPixels(doc) {
    return doc.people.some((person) =>
      PARTS.some((part) => (person[part] || []).some((v, i) => i % 3 !== 2 && v > 1)),
    );
  }

  function element(name, attributes) {
    const node = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
    return node;
  }

  function draw(doc) {
    const target = host();
    if (!target) return;
    target.replaceChildren();
    if (!doc) return;
    const W = doc.canvas_width;
    const H = doc.canvas_height;
    const scale = inPixels(doc) ? [1, 1] : [W, H];
    const svg = element("svg", {
      viewBox: `0 0 ${W} ${H}`, class: "easel-pose-svg", "data-width": W, "data-height": H,
    });
    svg.appendChild(element("rect", { x: 0, y: 0, width: W, height: H, fill: "#000" }));
    const radius = Math.max(W, H) / 120;
    doc.people.forEach((person, p) => {
      PARTS.forEach((part) => {
        const flat = person[part];
        if (!Array.isArray(flat)) return;
        const point = (i) => (flat[3 * i + 2] > 0 ? [flat[3 * i] * scale[0], flat[3 * i + 1] * scale[1]] : null);
        if (part === "pose_keypoints_2d") {
          LIMBS.forEach(([a, b], n) => {
            const from = point(a);
            const to = point(b);
            if (!from || !to) return;
            const hue = Math.round((n * 360) / LIMBS.length);
            svg.appendChild(element("line", {
              x1: from[0], y1: from[1], x2: to[0], y2: to[1], stroke: `hsl(${hue} 100% 50%)`,
              "stroke-width": radius * 1.6, "stroke-linecap": "round",
            }));
          });
        }
        for (let i = 0; i * 3 < flat.length; i++) {
          const at = point(i);
          if (!at) continue;
          const dot = element("circle", {
            cx: at[0], cy: at[1], r: part === "pose_keypoints_2d" ? radius * 1.4 : radius * 0.7,
            fill: part === "pose_keypoints_2d" ? "#fff" : "#9cf", class: "easel-pose-point",
            "data-person": p, "data-part": part, "data-index": i,
          });
          svg.appendChild(dot);
        }
      });
    });
    target.appendChild(svg);
  }

  let dragging = null;
  let shownText = null;

  function write(doc) {
    const area = box();
    if (!area) return;
    area.value = JSON.stringify(doc);
    shownText = area.value;
    area.dispatchEvent(new Event("input", { bubbles: true }));
  }

  document.addEventListener("pointerdown", (event) => {
    const dot = event.target.closest && event.target.closest(".easel-pose-point");
    if (!dot) return;
    const doc = parse(box() ? box().value : "");
    if (!doc) return;
    dragging = { dot, doc, svg: dot.ownerSVGElement };
    event.preventDefault();
  });

  document.addEventListener("pointermove", (event) => {
    if (!dragging) return;
    const { dot, doc, svg } = dragging;
    const rect = svg.getBoundingClientRect();
    const W = doc.canvas_width;
    const H = doc.canvas_height;
    const x = Math.min(W, Math.max(0, ((event.clientX - rect.left) / rect.width) * W));
    const y = Math.min(H, Math.max(0, ((event.clientY - rect.top) / rect.height) * H));
    dot.setAttribute("cx", x);
    dot.setAttribute("cy", y);
    const pixels = inPixels(doc);
    const flat = doc.people[Number(dot.dataset.person)][dot.dataset.part];
    const i = Number(dot.dataset.index);
    flat[3 * i] = pixels ? Math.round(x * 10) / 10 : Math.round((x / W) * 10000) / 10000;
    flat[3 * i + 1] = pixels ? Math.round(y * 10) / 10 : Math.round((y / H) * 10000) / 10000;
  });

  document.addEventListener("pointerup", () => {
    if (!dragging) return;
    const { doc } = dragging;
    dragging = null;
    write(doc);
    draw(doc);
  });

  // The JSON box changes when a preprocessor detects a pose, a person is added, or the user types: redraw.
  setInterval(() => {
    const area = box();
    if (!area || dragging || area.value === shownText) return;
    shownText = area.value;
    draw(parse(area.value));
  }, 400);

  window.easelPose = { parse, inPixels, draw };
}
