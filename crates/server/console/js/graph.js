// A small graph renderer on one <canvas>: nodes and weighted edges, a
// force layout (Barnes-Hut, so 1,000 nodes cost O(n log n) per step) run a
// few steps per animation frame within a time budget, so the page stays
// responsive while it settles. Edges are drawn in a handful of batched
// paths (by width class), not one element each. Pan by dragging, zoom with
// the wheel, hover for a tooltip, click to select; from the keyboard: the
// arrow keys pan, + and - zoom, 0 fits, n / p select the next / previous
// node by traffic, Escape clears the selection.

const THETA2 = 0.81; // Barnes-Hut opening criterion (theta = 0.9), squared
const CHARGE = -60;
const LINK_DISTANCE = 45;
const VELOCITY_DECAY = 0.6;
const ALPHA_MIN = 0.002;
const ALPHA_DECAY = 1 - Math.pow(ALPHA_MIN, 1 / 300);
const FRAME_BUDGET_MS = 8;
const WIDTH_CLASSES = 6;
const THICK_EDGES = 400;

/** A deterministic pseudo-random number from a string (stable first layout). */
function hash01(s, salt) {
  let h = 2166136261 ^ salt;
  for (let i = 0; i < s.length; i += 1) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 16777619);
  }
  return ((h >>> 0) % 100000) / 100000;
}

function cssVar(el, name, fallback) {
  const v = getComputedStyle(el).getPropertyValue(name).trim();
  return v || fallback;
}

/** One quadtree cell (Barnes-Hut). */
class Quad {
  constructor(x0, y0, size) {
    this.x0 = x0;
    this.y0 = y0;
    this.size = size;
    this.mass = 0;
    this.cx = 0;
    this.cy = 0;
    this.node = null;
    this.kids = null;
  }

  insert(n, depth = 0) {
    if (this.mass === 0 && !this.kids) {
      this.node = n;
      this.mass = 1;
      this.cx = n.x;
      this.cy = n.y;
      return;
    }
    if (!this.kids) {
      if (depth > 40) {
        // Coincident points: just add the mass here.
        this.cx = (this.cx * this.mass + n.x) / (this.mass + 1);
        this.cy = (this.cy * this.mass + n.y) / (this.mass + 1);
        this.mass += 1;
        return;
      }
      const old = this.node;
      this.node = null;
      this.kids = [null, null, null, null];
      this.place(old, depth);
    }
    this.place(n, depth);
    this.cx = (this.cx * this.mass + n.x) / (this.mass + 1);
    this.cy = (this.cy * this.mass + n.y) / (this.mass + 1);
    this.mass += 1;
  }

  place(n, depth) {
    const half = this.size / 2;
    const right = n.x >= this.x0 + half ? 1 : 0;
    const down = n.y >= this.y0 + half ? 1 : 0;
    const i = right + down * 2;
    if (!this.kids[i]) this.kids[i] = new Quad(this.x0 + right * half, this.y0 + down * half, half);
    this.kids[i].insert(n, depth + 1);
  }

  /** Adds the repulsion of this cell on `n` to its velocity. */
  apply(n, alpha) {
    if (this.mass === 0 || this.node === n) return;
    let dx = this.cx - n.x;
    let dy = this.cy - n.y;
    let d2 = dx * dx + dy * dy;
    if (this.kids && (this.size * this.size) / Math.max(d2, 1e-9) > THETA2) {
      for (const k of this.kids) if (k) k.apply(n, alpha);
      return;
    }
    if (d2 < 1e-6) {
      dx = (Math.random() - 0.5) * 1e-3;
      dy = (Math.random() - 0.5) * 1e-3;
      d2 = dx * dx + dy * dy;
    }
    if (d2 < 1) d2 = Math.sqrt(d2);
    const w = (CHARGE * this.mass * alpha) / d2;
    n.vx += dx * w;
    n.vy += dy * w;
  }
}

/** The renderer. `onSelect(id|null)` and `onHover(id|null)` are called on changes. */
export class GraphView {
  constructor(canvas, { onSelect, tooltip, describe } = {}) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.onSelect = onSelect || (() => {});
    this.tooltip = tooltip || null;
    this.describe = describe || ((n) => n.label);
    this.nodes = [];
    this.byId = new Map();
    this.links = []; // layout springs (every pair seen in the range)
    this.edges = []; // what is drawn (the slider's window)
    this.view = { x: 0, y: 0, k: 1 };
    this.alpha = 0;
    this.selected = null;
    this.hovered = null;
    this.raf = 0;
    this.userMoved = false;
    this.dragging = null;
    this.stepsTaken = 0;
    this.lastDrawMs = 0;
    this.bindEvents();
    this.resizeObserver = new ResizeObserver(() => this.resize());
    this.resizeObserver.observe(canvas);
    this.resize();
  }

  /** Stops animation and listeners. */
  destroy() {
    cancelAnimationFrame(this.raf);
    this.resizeObserver.disconnect();
    this.destroyed = true;
  }

  resize() {
    const r = this.canvas.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    this.width = Math.max(1, r.width);
    this.height = Math.max(1, r.height);
    this.canvas.width = Math.round(this.width * dpr);
    this.canvas.height = Math.round(this.height * dpr);
    this.dpr = dpr;
    this.schedule();
  }

  /**
   * Sets the graph: `nodes` [{id, label, external, weight}] and `links`
   * [{a, b, weight}] (node IDs) used for the layout. Known nodes keep their
   * positions; new ones start at a position derived from their ID.
   */
  setGraph(nodes, links) {
    const old = this.byId;
    this.byId = new Map();
    this.nodes = nodes.map((n) => {
      const prev = old.get(n.id);
      const spread = 30 * Math.sqrt(nodes.length + 1);
      const m = prev || { x: (hash01(n.id, 1) - 0.5) * spread, y: (hash01(n.id, 2) - 0.5) * spread, vx: 0, vy: 0 };
      const node = { ...n, x: m.x, y: m.y, vx: 0, vy: 0, degree: 0 };
      this.byId.set(n.id, node);
      return node;
    });
    this.links = [];
    for (const l of links) {
      const a = this.byId.get(l.a);
      const b = this.byId.get(l.b);
      if (!a || !b || a === b) continue;
      a.degree += 1;
      b.degree += 1;
      this.links.push({ a, b, weight: l.weight });
    }
    let maxW = 1;
    for (const n of this.nodes) if ((n.weight || 0) > maxW) maxW = n.weight;
    // Smaller dots when there are many (zooming in spreads them apart).
    const scale = Math.max(0.5, Math.min(1, Math.sqrt(150 / Math.max(1, this.nodes.length))));
    for (const n of this.nodes) n.r = (3 + 5 * (Math.log10(1 + (n.weight || 0)) / Math.log10(1 + maxW))) * scale;
    this.ranked = [...this.nodes].sort((x, y) => (y.weight || 0) - (x.weight || 0));
    this.alpha = old.size && this.nodes.every((n) => old.has(n.id)) ? 0.3 : 1;
    this.userMoved = false;
    this.stepsTaken = 0;
    if (this.selected && !this.byId.has(this.selected)) this.select(null);
    this.schedule();
  }

  /** Sets the edges drawn: [{a, b, weight, title}] (node IDs). */
  setEdges(edges) {
    this.edges = [];
    let max = 1;
    for (const e of edges) {
      const a = this.byId.get(e.a);
      const b = this.byId.get(e.b);
      if (!a || !b) continue;
      this.edges.push({ ...e, na: a, nb: b });
      if (e.weight > max) max = e.weight;
    }
    this.edges.sort((x, y) => x.weight - y.weight);
    this.edges.forEach((e, i) => {
      e.rank = i;
    });
    const lmax = Math.log10(1 + max);
    for (const e of this.edges) e.cls = Math.min(WIDTH_CLASSES - 1, Math.floor((Math.log10(1 + e.weight) / lmax) * WIDTH_CLASSES));
    const active = new Set();
    for (const e of this.edges) {
      active.add(e.na);
      active.add(e.nb);
    }
    this.active = active;
    this.schedule();
  }

  /** One layout step (charge, springs, gravity, integration). */
  step() {
    const nodes = this.nodes;
    if (!nodes.length) return;
    let x0 = Infinity;
    let y0 = Infinity;
    let x1 = -Infinity;
    let y1 = -Infinity;
    for (const n of nodes) {
      if (n.x < x0) x0 = n.x;
      if (n.y < y0) y0 = n.y;
      if (n.x > x1) x1 = n.x;
      if (n.y > y1) y1 = n.y;
    }
    const size = Math.max(x1 - x0, y1 - y0, 1) + 1;
    const root = new Quad(x0, y0, size);
    for (const n of nodes) root.insert(n);
    const alpha = this.alpha;
    for (const n of nodes) root.apply(n, alpha);
    for (const l of this.links) {
      const { a, b } = l;
      let dx = b.x + b.vx - a.x - a.vx;
      let dy = b.y + b.vy - a.y - a.vy;
      const d = Math.sqrt(dx * dx + dy * dy) || 1e-3;
      const strength = 1 / Math.min(a.degree, b.degree);
      const f = ((d - LINK_DISTANCE) / d) * alpha * strength;
      dx *= f;
      dy *= f;
      const bias = a.degree / (a.degree + b.degree);
      b.vx -= dx * bias;
      b.vy -= dy * bias;
      a.vx += dx * (1 - bias);
      a.vy += dy * (1 - bias);
    }
    for (const n of nodes) {
      // Gravity keeps unconnected nodes near the middle.
      n.vx -= n.x * 0.02 * alpha;
      n.vy -= n.y * 0.02 * alpha;
      if (n === this.dragging) {
        n.vx = 0;
        n.vy = 0;
        continue;
      }
      n.vx *= VELOCITY_DECAY;
      n.vy *= VELOCITY_DECAY;
      n.x += n.vx;
      n.y += n.vy;
    }
    this.alpha += (0 - this.alpha) * ALPHA_DECAY;
    this.stepsTaken += 1;
  }

  /**
   * Scales and centres the view on the nodes (with many nodes, on all but
   * the 1 % furthest out on each side, so that a few stragglers do not
   * shrink everything else).
   */
  fit() {
    const n = this.nodes.length;
    if (!n) return;
    const xs = this.nodes.map((d) => d.x).sort((a, b) => a - b);
    const ys = this.nodes.map((d) => d.y).sort((a, b) => a - b);
    const cut = n >= 100 ? Math.floor(n * 0.01) : 0;
    const x0 = xs[cut];
    const x1 = xs[n - 1 - cut];
    const y0 = ys[cut];
    const y1 = ys[n - 1 - cut];
    const pad = 40;
    const k = Math.min((this.width - pad * 2) / Math.max(x1 - x0, 1), (this.height - pad * 2) / Math.max(y1 - y0, 1), 4);
    this.view.k = k;
    this.view.x = this.width / 2 - ((x0 + x1) / 2) * k;
    this.view.y = this.height / 2 - ((y0 + y1) / 2) * k;
    this.schedule();
  }

  schedule() {
    if (!this.raf && !this.destroyed) this.raf = requestAnimationFrame(() => this.frame());
  }

  frame() {
    this.raf = 0;
    if (this.alpha > ALPHA_MIN) {
      const t0 = performance.now();
      do this.step();
      while (this.alpha > ALPHA_MIN && performance.now() - t0 < FRAME_BUDGET_MS);
      // Follow the layout until the user moves the view.
      if (!this.userMoved) this.fit();
    }
    this.draw();
    if (this.alpha > ALPHA_MIN) this.schedule();
  }

  /** Whether the layout has settled. */
  get settled() {
    return this.alpha <= ALPHA_MIN;
  }

  toScreen(n) {
    return [n.x * this.view.k + this.view.x, n.y * this.view.k + this.view.y];
  }

  draw() {
    const t0 = performance.now();
    const { ctx, dpr } = this;
    const edgeRgb = cssVar(this.canvas, "--graph-edge", "31, 111, 235");
    const nodeColor = cssVar(this.canvas, "--graph-node", "#24292f");
    const extColor = cssVar(this.canvas, "--graph-ext", "#9a6700");
    const accent = cssVar(this.canvas, "--bad", "#cf222e");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, this.width, this.height);
    const { x: vx, y: vy, k } = this.view;
    const sel = this.selected ? this.byId.get(this.selected) : null;
    const neighbours = new Set();
    // Edges: one path per width class (and one for the selection).
    const classes = Array.from({ length: WIDTH_CLASSES }, () => []);
    const hot = [];
    for (const e of this.edges) {
      if (sel && (e.na === sel || e.nb === sel)) {
        hot.push(e);
        neighbours.add(e.na);
        neighbours.add(e.nb);
      } else classes[e.cls].push(e);
    }
    ctx.lineCap = "butt";
    const moving = this.alpha > ALPHA_MIN;
    // Hairlines are cheap to raster, wide lines are not: only the
    // heaviest THICK_EDGES edges get their width (and only once the
    // layout has settled); the rest are hairlines whose opacity follows
    // their bytes.
    const thickFrom = moving ? Infinity : Math.max(0, this.edges.length - THICK_EDGES);
    for (let pass = 0; pass < 2; pass += 1) for (let c = 0; c < WIDTH_CLASSES; c += 1) {
      const list = classes[c].filter((e) => (pass === 1) === (e.rank >= thickFrom));
      if (!list.length) continue;
      ctx.beginPath();
      for (const e of list) {
        const x1 = e.na.x * k + vx;
        const y1 = e.na.y * k + vy;
        const x2 = e.nb.x * k + vx;
        const y2 = e.nb.y * k + vy;
        // Off-screen on one side: not drawn.
        if ((x1 < 0 && x2 < 0) || (y1 < 0 && y2 < 0) || (x1 > this.width && x2 > this.width) || (y1 > this.height && y2 > this.height)) continue;
        ctx.moveTo(x1, y1);
        ctx.lineTo(x2, y2);
      }
      // While the layout moves, thin lines (cheap to raster); their weight once it settles.
      ctx.lineWidth = pass === 1 ? 1 + c * 0.8 : 1;
      ctx.strokeStyle = `rgba(${edgeRgb}, ${sel ? 0.1 : 0.3 + c * 0.12})`;
      ctx.stroke();
    }
    if (hot.length) {
      for (const e of hot) {
        ctx.beginPath();
        ctx.moveTo(e.na.x * k + vx, e.na.y * k + vy);
        ctx.lineTo(e.nb.x * k + vx, e.nb.y * k + vy);
        ctx.lineWidth = 1.2 + e.cls * 1.0;
        ctx.strokeStyle = accent;
        ctx.stroke();
      }
    }
    // Nodes: inactive ones (no traffic in the window) faint.
    const active = this.active || new Set();
    for (const pass of ["idle", "ext", "node"]) {
      ctx.beginPath();
      for (const n of this.nodes) {
        const kind = !active.has(n) ? "idle" : n.external ? "ext" : "node";
        if (kind !== pass) continue;
        const x = n.x * k + vx;
        const y = n.y * k + vy;
        if (x < -20 || y < -20 || x > this.width + 20 || y > this.height + 20) continue;
        ctx.moveTo(x + n.r, y);
        ctx.arc(x, y, n.r, 0, Math.PI * 2);
      }
      ctx.fillStyle = pass === "ext" ? extColor : nodeColor;
      ctx.globalAlpha = pass === "idle" ? 0.25 : 1;
      ctx.fill();
      ctx.globalAlpha = 1;
    }
    if (sel) {
      const [x, y] = this.toScreen(sel);
      ctx.beginPath();
      ctx.arc(x, y, sel.r + 4, 0, Math.PI * 2);
      ctx.lineWidth = 2.5;
      ctx.strokeStyle = accent;
      ctx.stroke();
    }
    // Labels: the busiest nodes, the selection and its neighbours, the hovered one.
    ctx.font = "12px system-ui, sans-serif";
    ctx.fillStyle = nodeColor;
    ctx.textBaseline = "middle";
    const labelled = new Set();
    const limit = Math.min(this.ranked ? this.ranked.length : 0, Math.round(12 * Math.max(1, k)));
    for (let i = 0; i < limit; i += 1) if (active.has(this.ranked[i])) labelled.add(this.ranked[i]);
    for (const n of neighbours) labelled.add(n);
    if (this.hovered && this.byId.get(this.hovered)) labelled.add(this.byId.get(this.hovered));
    // A halo of the background keeps labels readable over edges.
    ctx.strokeStyle = cssVar(this.canvas, "--graph-bg", "#fbfcfd");
    ctx.lineWidth = 3;
    ctx.lineJoin = "round";
    for (const n of labelled) {
      const [x, y] = this.toScreen(n);
      if (x < -50 || y < -20 || x > this.width + 50 || y > this.height + 20) continue;
      ctx.strokeText(n.label, x + n.r + 4, y);
      ctx.fillText(n.label, x + n.r + 4, y);
    }
    this.lastDrawMs = performance.now() - t0;
  }

  /** The node under a screen point, if any. */
  pick(px, py) {
    const { x: vx, y: vy, k } = this.view;
    let best = null;
    let bestD = Infinity;
    for (const n of this.nodes) {
      const dx = n.x * k + vx - px;
      const dy = n.y * k + vy - py;
      const d = dx * dx + dy * dy;
      const r = Math.max(n.r + 3, 6);
      if (d < r * r && d < bestD) {
        best = n;
        bestD = d;
      }
    }
    return best;
  }

  /** Selects a node by ID (null clears). */
  select(id) {
    this.selected = id;
    this.onSelect(id);
    this.schedule();
  }

  zoomAt(factor, px, py) {
    this.userMoved = true;
    const k = Math.max(0.05, Math.min(20, this.view.k * factor));
    const f = k / this.view.k;
    this.view.x = px - (px - this.view.x) * f;
    this.view.y = py - (py - this.view.y) * f;
    this.view.k = k;
    this.schedule();
  }

  bindEvents() {
    const c = this.canvas;
    let down = null;
    const pos = (ev) => {
      const r = c.getBoundingClientRect();
      return [ev.clientX - r.left, ev.clientY - r.top];
    };
    c.addEventListener("wheel", (ev) => {
      ev.preventDefault();
      const [x, y] = pos(ev);
      this.zoomAt(Math.exp(-ev.deltaY * 0.0015), x, y);
    }, { passive: false });
    c.addEventListener("pointerdown", (ev) => {
      const [x, y] = pos(ev);
      down = { x, y, vx: this.view.x, vy: this.view.y, moved: false };
      c.setPointerCapture(ev.pointerId);
    });
    c.addEventListener("pointermove", (ev) => {
      const [x, y] = pos(ev);
      if (down) {
        if (Math.abs(x - down.x) + Math.abs(y - down.y) > 3) {
          down.moved = true;
          this.userMoved = true;
        }
        this.view.x = down.vx + (x - down.x);
        this.view.y = down.vy + (y - down.y);
        this.schedule();
        return;
      }
      const n = this.pick(x, y);
      const id = n ? n.id : null;
      if (id !== this.hovered) {
        this.hovered = id;
        this.schedule();
      }
      if (this.tooltip) {
        if (n) {
          this.tooltip.textContent = this.describe(n);
          this.tooltip.style.setProperty("--x", String(x));
          this.tooltip.style.setProperty("--y", String(y));
          this.tooltip.classList.remove("hidden");
        } else {
          this.tooltip.classList.add("hidden");
        }
      }
    });
    c.addEventListener("pointerup", (ev) => {
      const [x, y] = pos(ev);
      if (down && !down.moved) {
        const n = this.pick(x, y);
        this.select(n ? n.id : null);
      }
      down = null;
    });
    c.addEventListener("pointerleave", () => {
      if (this.tooltip) this.tooltip.classList.add("hidden");
      if (this.hovered) {
        this.hovered = null;
        this.schedule();
      }
    });
    c.addEventListener("keydown", (ev) => {
      const step = 40;
      const cycle = (dir) => {
        const list = (this.ranked || []).filter((n) => !this.active || this.active.has(n));
        if (!list.length) return;
        const i = list.findIndex((n) => n.id === this.selected);
        const next = list[(i + dir + list.length) % list.length];
        this.select(next.id);
        // Bring it into view.
        const [x, y] = this.toScreen(next);
        if (x < 0 || y < 0 || x > this.width || y > this.height) {
          this.view.x += this.width / 2 - x;
          this.view.y += this.height / 2 - y;
        }
      };
      const keys = {
        ArrowLeft: () => { this.userMoved = true; this.view.x += step; },
        ArrowRight: () => { this.userMoved = true; this.view.x -= step; },
        ArrowUp: () => { this.userMoved = true; this.view.y += step; },
        ArrowDown: () => { this.userMoved = true; this.view.y -= step; },
        "+": () => this.zoomAt(1.25, this.width / 2, this.height / 2),
        "=": () => this.zoomAt(1.25, this.width / 2, this.height / 2),
        "-": () => this.zoomAt(0.8, this.width / 2, this.height / 2),
        0: () => { this.userMoved = false; this.fit(); },
        n: () => cycle(1),
        p: () => cycle(-1),
        Escape: () => this.select(null),
      };
      const f = keys[ev.key];
      if (!f) return;
      ev.preventDefault();
      f();
      this.schedule();
    });
  }
}
