import { ILabShell, ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { ITranslator, nullTranslator } from '@jupyterlab/translation';
import { LabIcon } from '@jupyterlab/ui-components';

import { DOMAIN, WorkbenchPanel } from './panel';

const ICON_SVG =
  '<svg xmlns="http://www.w3.org/2000/svg" width="16" viewBox="0 0 24 24"><g class="jp-icon3" fill="#616161">' +
  '<path d="M3 4h18v4H3zM3 10h8v10H3zM13 10h8v4h-8zM13 16h8v4h-8z"/></g></svg>';

export const workbenchIcon = new LabIcon({ name: 'atlaslab-workbench:icon', svgstr: ICON_SVG });

const OPEN = 'atlaslab-workbench:open';

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'atlaslab-workbench:plugin',
  description: 'AtlasLab workbench: environment, credits, experiments, Dask and courses in the sidebar',
  autoStart: true,
  optional: [ITranslator, ILabShell, ILayoutRestorer, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    translator: ITranslator | null,
    labShell: ILabShell | null,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null
  ) => {
    const tr = translator ?? nullTranslator;
    const trans = tr.load(DOMAIN);
    const panel = new WorkbenchPanel(tr);
    panel.title.icon = workbenchIcon;
    app.shell.add(panel, 'left', { rank: 150 });
    restorer?.add(panel, panel.id);
    app.commands.addCommand(OPEN, {
      label: trans.__('Open the AtlasLab workbench'),
      execute: () => {
        if (labShell) {
          labShell.activateById(panel.id);
        } else {
          app.shell.activateById(panel.id);
        }
        // Run from the command palette, which gives the focus back to the main area once the command is done:
        // move it to the panel after that, so a keyboard user lands in what they opened.
        window.setTimeout(() => panel.focusIn(), 0);
      }
    });
    palette?.addItem({ command: OPEN, category: 'AtlasLab' });
  }
};

export default plugin;
