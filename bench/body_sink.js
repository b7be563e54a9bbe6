// An HTTP server that consumes request bodies on Node's one JS thread, for comparing one large
// PUT with several smaller ones in parallel without S3 in the way.
// Usage: node bench/body_sink.js drop|md5|file DIR   (prints the port it listens on)
'use strict';
const http = require('http');
const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const { Transform } = require('stream');

const [mode, dir] = process.argv.slice(2);
let n = 0;
http.createServer((req, res) => {
  const done = () => res.end('ok');
  if (mode === 'drop') {
    req.on('data', () => {}).on('end', done);
    return;
  }
  const md5 = crypto.createHash('md5');
  if (mode === 'md5') {
    req.on('data', (c) => md5.update(c)).on('end', () => { md5.digest('hex'); done(); });
    return;
  }
  const hash = new Transform({ transform(c, e, cb) { md5.update(c); cb(null, c); } });
  req.pipe(hash).pipe(fs.createWriteStream(path.join(dir, 'body' + (n++ % 8)))).on('finish', done);
}).listen(0, '127.0.0.1', function () { console.log(this.address().port); });
