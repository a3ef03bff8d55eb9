// A small terminal screen for replaying recordings: a grid of cells fed
// the bytes a session printed, understanding what shells and most
// full-screen programs use (cursor movement, erasing, scrolling, the
// alternate screen, 16 colours, bold/underline/inverse). 256-colour and
// true-colour codes fall back to the default colour; wide characters take
// one cell. Drawn as text into a <pre>, one span per run of one style
// (classes, no inline style: the CSP forbids it).

const BLANK = " ";

function blankRow(cols) {
  return { ch: new Array(cols).fill(BLANK), st: new Array(cols).fill(0) };
}

/** Style bits: fg (0 = default, 1..16), bg (0..16), and flags. */
const BOLD = 1 << 10;
const UNDER = 1 << 11;
const INVERSE = 1 << 12;
const DIM = 1 << 13;
const ITALIC = 1 << 14;
const FG = 0x1f;
const BG = 0x1f << 5;

/** The class names of a style. */
function classes(st) {
  const out = [];
  let fg = st & FG;
  let bg = (st & BG) >> 5;
  if (st & INVERSE) {
    [fg, bg] = [bg || 17, fg || 18];
  }
  if (fg) out.push(fg === 17 ? "t-fgbg" : fg === 18 ? "t-fgdef" : `t-f${fg - 1}`);
  if (bg) out.push(bg === 17 ? "t-bgbg" : bg === 18 ? "t-bgfg" : `t-b${bg - 1}`);
  if (st & BOLD) out.push("t-bold");
  if (st & DIM) out.push("t-dim");
  if (st & UNDER) out.push("t-under");
  if (st & ITALIC) out.push("t-italic");
  return out.join(" ");
}

/** A terminal screen of `cols` x `rows`. */
export class Screen {
  constructor(cols = 80, rows = 24) {
    this.reset(cols, rows);
  }

  /** Clears everything (a new replay, or a resize). */
  reset(cols, rows) {
    this.cols = Math.max(1, Math.min(cols | 0 || 80, 500));
    this.rows = Math.max(1, Math.min(rows | 0 || 24, 200));
    this.lines = Array.from({ length: this.rows }, () => blankRow(this.cols));
    this.saved = null; // the main screen while the alternate one shows
    this.x = 0;
    this.y = 0;
    this.st = 0;
    this.cursor = [0, 0];
    this.top = 0;
    this.bottom = this.rows - 1;
    this.state = 0; // 0 text, 1 ESC, 2 CSI, 3 OSC, 4 charset, 5 OSC after ESC
    this.params = "";
    this.pending = false; // wrap at the next character
  }

  scrollUp(n = 1) {
    for (let i = 0; i < n; i += 1) {
      this.lines.splice(this.top, 1);
      this.lines.splice(this.bottom, 0, blankRow(this.cols));
    }
  }

  scrollDown(n = 1) {
    for (let i = 0; i < n; i += 1) {
      this.lines.splice(this.bottom, 1);
      this.lines.splice(this.top, 0, blankRow(this.cols));
    }
  }

  lineFeed() {
    if (this.y === this.bottom) this.scrollUp();
    else if (this.y < this.rows - 1) this.y += 1;
  }

  put(c) {
    if (this.pending) {
      this.pending = false;
      this.x = 0;
      this.lineFeed();
    }
    const row = this.lines[this.y];
    row.ch[this.x] = c;
    row.st[this.x] = this.st;
    if (this.x === this.cols - 1) this.pending = true;
    else this.x += 1;
  }

  erase(row, from, to) {
    const r = this.lines[row];
    for (let i = Math.max(0, from); i < Math.min(this.cols, to); i += 1) {
      r.ch[i] = BLANK;
      r.st[i] = this.st & BG;
    }
  }

  sgr(list) {
    const p = list.length ? list : [0];
    for (let i = 0; i < p.length; i += 1) {
      const n = p[i];
      if (n === 0) this.st = 0;
      else if (n === 1) this.st |= BOLD;
      else if (n === 2) this.st |= DIM;
      else if (n === 3) this.st |= ITALIC;
      else if (n === 4) this.st |= UNDER;
      else if (n === 7) this.st |= INVERSE;
      else if (n === 22) this.st &= ~(BOLD | DIM);
      else if (n === 23) this.st &= ~ITALIC;
      else if (n === 24) this.st &= ~UNDER;
      else if (n === 27) this.st &= ~INVERSE;
      else if (n >= 30 && n <= 37) this.st = (this.st & ~FG) | (n - 30 + 1);
      else if (n === 39) this.st &= ~FG;
      else if (n >= 40 && n <= 47) this.st = (this.st & ~BG) | ((n - 40 + 1) << 5);
      else if (n === 49) this.st &= ~BG;
      else if (n >= 90 && n <= 97) this.st = (this.st & ~FG) | (n - 90 + 9);
      else if (n >= 100 && n <= 107) this.st = (this.st & ~BG) | ((n - 100 + 9) << 5);
      else if (n === 38 || n === 48) {
        // 256 colours (the first 16 kept) or true colour (default).
        const which = n === 38 ? FG : BG;
        const shift = n === 38 ? 0 : 5;
        if (p[i + 1] === 5) {
          const c = p[i + 2];
          this.st = (this.st & ~which) | (c >= 0 && c < 16 ? (c + 1) << shift : 0);
          i += 2;
        } else if (p[i + 1] === 2) {
          this.st &= ~which;
          i += 4;
        }
      }
    }
  }

  csi(final) {
    const priv = this.params.startsWith("?");
    const p = (priv ? this.params.slice(1) : this.params).split(";").map((v) => (v === "" ? NaN : parseInt(v, 10)));
    const n = (i, d = 1) => (Number.isNaN(p[i]) || p[i] === undefined || (p[i] === 0 && d === 1) ? d : p[i]);
    const clampY = (y) => Math.max(0, Math.min(this.rows - 1, y));
    const clampX = (x) => Math.max(0, Math.min(this.cols - 1, x));
    this.pending = false;
    switch (final) {
      case "A": this.y = clampY(this.y - n(0)); break;
      case "B": case "e": this.y = clampY(this.y + n(0)); break;
      case "C": case "a": this.x = clampX(this.x + n(0)); break;
      case "D": this.x = clampX(this.x - n(0)); break;
      case "E": this.y = clampY(this.y + n(0)); this.x = 0; break;
      case "F": this.y = clampY(this.y - n(0)); this.x = 0; break;
      case "G": case "`": this.x = clampX(n(0) - 1); break;
      case "d": this.y = clampY(n(0) - 1); break;
      case "H": case "f": this.y = clampY(n(0) - 1); this.x = clampX(n(1) - 1); break;
      case "J": {
        const m = n(0, 0);
        if (m === 0) {
          this.erase(this.y, this.x, this.cols);
          for (let r = this.y + 1; r < this.rows; r += 1) this.erase(r, 0, this.cols);
        } else if (m === 1) {
          this.erase(this.y, 0, this.x + 1);
          for (let r = 0; r < this.y; r += 1) this.erase(r, 0, this.cols);
        } else {
          for (let r = 0; r < this.rows; r += 1) this.erase(r, 0, this.cols);
        }
        break;
      }
      case "K": {
        const m = n(0, 0);
        if (m === 0) this.erase(this.y, this.x, this.cols);
        else if (m === 1) this.erase(this.y, 0, this.x + 1);
        else this.erase(this.y, 0, this.cols);
        break;
      }
      case "X": this.erase(this.y, this.x, this.x + n(0)); break;
      case "P": {
        const r = this.lines[this.y];
        r.ch.splice(this.x, n(0));
        r.st.splice(this.x, n(0));
        while (r.ch.length < this.cols) {
          r.ch.push(BLANK);
          r.st.push(0);
        }
        break;
      }
      case "@": {
        const r = this.lines[this.y];
        for (let i = 0; i < n(0); i += 1) {
          r.ch.splice(this.x, 0, BLANK);
          r.st.splice(this.x, 0, 0);
        }
        r.ch.length = this.cols;
        r.st.length = this.cols;
        break;
      }
      case "L": if (this.y >= this.top && this.y <= this.bottom) { const t = this.top; this.top = this.y; this.scrollDown(n(0)); this.top = t; } break;
      case "M": if (this.y >= this.top && this.y <= this.bottom) { const t = this.top; this.top = this.y; this.scrollUp(n(0)); this.top = t; } break;
      case "S": this.scrollUp(n(0)); break;
      case "T": this.scrollDown(n(0)); break;
      case "r": {
        const t = n(0) - 1;
        const b = Number.isNaN(p[1]) || p[1] === undefined ? this.rows - 1 : p[1] - 1;
        if (t < b) {
          this.top = clampY(t);
          this.bottom = clampY(b);
        }
        this.x = 0;
        this.y = 0;
        break;
      }
      case "m": this.sgr(p.map((v) => (Number.isNaN(v) ? 0 : v))); break;
      case "s": this.cursor = [this.x, this.y]; break;
      case "u": [this.x, this.y] = this.cursor; break;
      case "h":
      case "l":
        if (priv && p.some((v) => v === 1049 || v === 47 || v === 1047)) {
          if (final === "h" && !this.saved) {
            this.saved = { lines: this.lines, x: this.x, y: this.y };
            this.lines = Array.from({ length: this.rows }, () => blankRow(this.cols));
          } else if (final === "l" && this.saved) {
            ({ lines: this.lines, x: this.x, y: this.y } = this.saved);
            this.saved = null;
          }
        }
        break;
      default:
        break;
    }
  }

  /** Feeds text the session printed. */
  write(text) {
    for (const c of text) {
      const code = c.codePointAt(0);
      switch (this.state) {
        case 0:
          if (code === 0x1b) this.state = 1;
          else if (c === "\r") {
            this.x = 0;
            this.pending = false;
          } else if (c === "\n" || code === 0x0b || code === 0x0c) {
            this.pending = false;
            this.lineFeed();
          } else if (c === "\b") {
            this.pending = false;
            this.x = Math.max(0, this.x - 1);
          } else if (c === "\t") this.x = Math.min(this.cols - 1, (Math.floor(this.x / 8) + 1) * 8);
          else if (code >= 0x20 && code !== 0x7f) this.put(c);
          break;
        case 1:
          if (c === "[") {
            this.state = 2;
            this.params = "";
          } else if (c === "]") this.state = 3;
          else if (c === "(" || c === ")" || c === "*" || c === "+") this.state = 4;
          else {
            if (c === "7") this.cursor = [this.x, this.y];
            else if (c === "8") [this.x, this.y] = this.cursor;
            else if (c === "M") {
              if (this.y === this.top) this.scrollDown();
              else this.y = Math.max(0, this.y - 1);
            } else if (c === "D") this.lineFeed();
            else if (c === "E") {
              this.x = 0;
              this.lineFeed();
            } else if (c === "c") this.reset(this.cols, this.rows);
            this.state = 0;
          }
          break;
        case 2:
          if (code >= 0x40 && code <= 0x7e) {
            this.csi(c);
            this.state = 0;
          } else this.params += c;
          break;
        case 3:
          if (code === 0x07) this.state = 0;
          else if (code === 0x1b) this.state = 5;
          break;
        case 5:
          this.state = c === "\\" ? 0 : 3;
          break;
        default:
          this.state = 0;
      }
    }
  }

  /** The screen as plain text (tests, copy). */
  text() {
    return this.lines.map((r) => r.ch.join("").replace(/\s+$/, "")).join("\n").replace(/\n+$/, "");
  }

  /** Draws the screen into `pre` (its children replaced). */
  render(pre) {
    const frag = document.createDocumentFragment();
    this.lines.forEach((r, i) => {
      let run = "";
      let st = r.st[0];
      const flush = () => {
        if (!run) return;
        const cls = classes(st);
        if (cls) {
          const s = document.createElement("span");
          s.className = cls;
          s.textContent = run;
          frag.appendChild(s);
        } else frag.appendChild(document.createTextNode(run));
        run = "";
      };
      for (let x = 0; x < this.cols; x += 1) {
        if (r.st[x] !== st) {
          flush();
          st = r.st[x];
        }
        run += r.ch[x];
      }
      flush();
      if (i < this.lines.length - 1) frag.appendChild(document.createTextNode("\n"));
    });
    while (pre.firstChild) pre.removeChild(pre.firstChild);
    pre.appendChild(frag);
  }
}
