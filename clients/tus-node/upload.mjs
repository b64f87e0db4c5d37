// tus-js-client v4 against imagesvc, one step per Node process (the tests start a new
// process to resume, as an app restarted by its user would).
//
//   node upload.mjs abort  FILE ENDPOINT KEY CHUNK FRACTION  -> prints {"url": ...} once aborted
//   node upload.mjs resume FILE UPLOAD_URL KEY CHUNK         -> prints {"url", "imageId"}
//   node upload.mjs whole  FILE ENDPOINT KEY [--during-creation]
//
// CHUNK is a byte count or "Infinity" (the whole file in one PATCH).
import fs from 'node:fs';
import { Upload } from 'tus-js-client';

const [mode, file, target, key, ...rest] = process.argv.slice(2);
const common = {
  headers: { Authorization: `Bearer ${key}` },
  retryDelays: [0, 500, 1000, 2000, 3000],
  onError: (err) => {
    console.error('onError', err.message, err.originalResponse?.getStatus());
    process.exit(1);
  },
  onSuccess: ({ lastResponse }) => {
    console.log(JSON.stringify({ url: upload.url, imageId: lastResponse.getHeader('Image-Id') }));
  },
};
const chunk = (value) => (value === 'Infinity' ? Infinity : Number(value));
let upload;

if (mode === 'abort') {
  const [size, fraction] = [chunk(rest[0]), Number(rest[1])];
  let aborted = false;
  upload = new Upload(fs.createReadStream(file), {
    ...common,
    endpoint: target,
    chunkSize: size,
    metadata: { filename: 'resumed.jpg', filetype: 'text/html' },
    onProgress: (sent, total) => {
      if (!aborted && sent / total >= fraction) {
        aborted = true;
        // abort() closes the connection mid-PATCH; abort(true) would also DELETE.
        upload.abort().then(() => console.log(JSON.stringify({ url: upload.url, sent })));
      }
    },
    onSuccess: () => {
      console.error('finished before the abort');
      process.exit(2);
    },
  });
} else if (mode === 'resume') {
  upload = new Upload(fs.createReadStream(file), {
    ...common,
    uploadUrl: target, // no endpoint: a 404/410 is an error, never a silent new upload
    chunkSize: chunk(rest[0]),
  });
} else if (mode === 'whole') {
  upload = new Upload(fs.createReadStream(file), {
    ...common,
    endpoint: target,
    uploadDataDuringCreation: rest[0] === '--during-creation',
    metadata: { filename: 'whole.jpg' },
  });
} else {
  console.error(`unknown mode ${mode}`);
  process.exit(2);
}
upload.start();
